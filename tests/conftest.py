"""Shared fixtures: small real mmdet models (built once per session), synthetic images, and a
headless Chromium for the HTML report."""
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from mmdet_cam import build_detector, resolve_config
from mmdet_cam.model.detector import keep_all_detections

# the most expensive models: their parametrised cases are marked slow wherever they appear
SLOW_CONFIGS = ('cascade-rcnn', 'sabl-faster-rcnn', 'dino-4scale', 'point-rend')
SIZE = 320  # network input side used by the tests (the configs' own sizes are 640-1333)
REPO = Path(__file__).parents[1]
DEMO_IMAGE = str(REPO / 'demo' / 'images' / 'shapes_1.jpg')


def small_config(name: str, size: int = SIZE):
    """A shipped mmdet config with a ``size``-pixel test pipeline, no score threshold
    (untrained models score far below the usual 0.05) and no minimum box size (untrained
    RTMDet predicts empty boxes)."""
    from mmdet.utils import get_test_pipeline_cfg
    cfg = resolve_config(name)
    keep_all_detections(cfg.model.get('test_cfg'))
    for transform in get_test_pipeline_cfg(cfg):
        if 'Resize' in transform['type'] and 'scale' in transform:
            transform['scale'] = (size, size)
        if transform['type'].endswith('Pad') and transform.get('size'):
            transform['size'] = (size, size)
    return cfg


def pytest_collection_modifyitems(items):
    for item in items:
        if any(name in item.nodeid for name in SLOW_CONFIGS):
            item.add_marker(pytest.mark.slow)


class ModelCache:
    """Untrained (``init_weights()``, seed 0) models, built at most once per session."""

    def __init__(self):
        self._models = {}

    def __call__(self, name: str):
        if name not in self._models:
            torch.manual_seed(0)
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                self._models[name] = build_detector(small_config(name))
        return self._models[name]


@pytest.fixture(scope='session')
def models():
    return ModelCache()


def make_scene(height=240, width=320, seed=0):
    """A noisy BGR image with a few bright shapes; deliberately not square."""
    rng = np.random.default_rng(seed)
    image = rng.integers(40, 90, size=(height, width, 3), dtype=np.uint8)
    image[30:110, 40:140] = (30, 200, 240)
    image[120:220, 180:290] = (220, 60, 60)
    yy, xx = np.mgrid[:height, :width]
    image[(yy - 70) ** 2 + (xx - 250) ** 2 < 35 ** 2] = (60, 230, 60)
    return image


@pytest.fixture(scope='session')
def scene():
    return make_scene()


@pytest.fixture(scope='session')
def demo_model():
    """The shipped demo detector (trained RTMDet on synthetic shapes)."""
    return build_detector(str(REPO / 'demo' / 'rtmdet_shapes.py'),
                          str(REPO / 'demo' / 'rtmdet_shapes.pth'))


@pytest.fixture(scope='session')
def evidence_demo():
    """The RTMDet evidence demo: a cue alone sets each object's class (``shapes``,
    ``kind='evidence'``)."""
    return build_detector(str(REPO / 'demo' / 'rtmdet_evidence.py'),
                          str(REPO / 'demo' / 'rtmdet_evidence.pth'))


@pytest.fixture(scope='session')
def browser():
    """Debian's Chromium, headless, driven by Playwright (its own browser download is not
    used: nothing is downloaded at run time)."""
    from playwright.sync_api import sync_playwright
    path = next(filter(None, map(shutil.which, ('chromium', 'chromium-browser'))), None)
    if path is None:
        pytest.fail('the report tests need Chromium: apt-get install -y chromium')
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=path, args=['--no-sandbox'] if os.geteuid() == 0 else [])
        yield launched
        launched.close()
