import re
from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version = re.search(r"__version__ = '([^']+)'",
                    (here / 'mmdet_cam' / 'version.py').read_text()).group(1)

setup(
    name='mmdet-cam',
    version=version,
    description='Per-detection class-activation maps (Grad-CAM and friends) '
    'for MMDetection 3.x detectors',
    long_description=(here / 'README.md').read_text(encoding='utf-8'),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.8',
    packages=find_packages(include=['mmdet_cam', 'mmdet_cam.*']),
    package_data={'mmdet_cam': ['outputs/templates/*.html']},
    install_requires=[
        # torch/torchvision and mmcv are installed first by scripts/install.sh (they need a
        # matched pair and a source build); these ranges only check what is there.
        'torch>=1.8',
        'torchvision>=0.9',
        'mmcv>=2.0.0,<2.2.0',  # mmdet 3.3 asserts mmcv < 2.2
        'mmengine>=0.7.1,<1.0',
        'mmdet>=3.0.0,<4.0',
        'grad-cam>=1.5,<2',
        'captum>=0.9',  # occlusion (multi-output attributions: every box from one pass)
        'opencv-python>=4.5',
        'numpy',
    ],
    # browser tests drive Debian's chromium (apt-get install chromium) with Playwright
    extras_require={
        'tests': ['pytest>=7', 'playwright>=1.40', 'ruff==0.17.6', 'tensorboard>=2.14'],
        # text-prompted detectors (Grounding DINO, GLIP); their Grounding DINO layers import
        # fairscale. transformers < 4.52: GLIP's fusion layers import apply_chunking_to_forward
        # and mmpretrain 1.2 imports GenerationMixin from transformers.modeling_utils, which
        # no longer re-exports them from 4.56 and 4.52 on (GLIP then fails to build)
        'multimodal': ['transformers>=4.40,<4.52', 'huggingface_hub<1.0', 'fairscale'],
        # what benchmarks/zoo.py needs beyond that for the configs that use it
        'zoo': ['scikit-image', 'mmpretrain>=1.2,<1.3', 'timm'],
    },
    entry_points={'console_scripts': ['mmdet-cam=mmdet_cam.cli:main']},
    classifiers=[
        'Programming Language :: Python :: 3',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
    ],
)
