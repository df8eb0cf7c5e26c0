"""Per-detection CAM images: python tools/demo_gradcam.py CONFIG CHECKPOINT IMG [options].

Run with --help for every option and examples. Same as the installed ``mmdet-cam`` command.
"""
import sys

from mmdet_cam.cli import main

if __name__ == '__main__':
    sys.exit(main())
