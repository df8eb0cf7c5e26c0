"""Scores of maps against boxes and against evidence known by construction. Arrays in,
numbers out: nothing here builds a model or knows which method made a map. The one exception
is the sanity check (``sanity``), which re-runs an explainer on randomised copies of its
model."""
from ..boxes import box_mask
from .evidence import evidence_mass, evidence_pointing, rank_accuracy
from .faithfulness import (
    auc,
    detection_faithfulness,
    mask_tracker,
    object_discrimination,
    perturbation_curve,
    road_combined,
    road_curve,
    tracked_mask_score,
    tracked_score,
    tracker,
)
from .localization import (
    box_area_share,
    energy_in_box,
    energy_in_mask,
    peak_location,
    pointing_hit,
    pointing_hit_mask,
)
from .sanity import SanityResult, parameter_randomisation
from .triage import triage

__all__ = ['box_area_share', 'box_mask', 'energy_in_box', 'energy_in_mask', 'peak_location',
           'pointing_hit', 'pointing_hit_mask',
           'auc', 'detection_faithfulness', 'mask_tracker', 'object_discrimination',
           'perturbation_curve', 'road_combined', 'road_curve', 'tracked_mask_score',
           'tracked_score', 'tracker',
           'SanityResult', 'parameter_randomisation', 'triage',
           'evidence_mass', 'evidence_pointing', 'rank_accuracy']
