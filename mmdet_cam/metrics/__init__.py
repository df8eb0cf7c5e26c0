"""Scores of maps against boxes. Arrays in, numbers out: nothing here calls a model or knows
which method made a map."""
from .faithfulness import (auc, object_discrimination, perturbation_curve, tracked_score,
                           tracker)
from .localization import (box_area_share, box_mask, energy_in_box, peak_location,
                           pointing_hit)

__all__ = ['box_area_share', 'box_mask', 'energy_in_box', 'peak_location', 'pointing_hit',
           'auc', 'object_discrimination', 'perturbation_curve', 'tracked_score', 'tracker']
