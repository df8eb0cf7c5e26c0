"""Size and load time of the HTML report (``--html``) for a folder of many images.

Explains ``--images`` generated shapes images (the demo model's kind, 320x240) with the
shipped demo model and the default method, writes the report, then opens ``index.html``
from disk in headless Chromium (Debian's package, driven by Playwright) ``--loads`` times.

  load s        median time until the index's ``load`` event (thumbnails load lazily: those
                in view are included)
  first page s  the same for the first image's page
  MB per image  the report folder's size over the number of images (every file the run
                wrote for the report: thumbnail, original, one map per box, the fused map,
                JSON and page)

    python benchmarks/report.py --quick      # 20 images, under a minute
    python benchmarks/report.py              # 200 images, a few minutes on 2 cores
"""
import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from mmengine.utils import ProgressBar

from mmdet_cam import DetCAM, write_report
from mmdet_cam.outputs import ResultWriter, describe_run
from mmdet_cam.settings import OutputSettings
from mmdet_cam.shapes import make_image

REPO = Path(__file__).parents[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--images', type=int, default=200)
    parser.add_argument('--loads', type=int, default=5)
    parser.add_argument('--quick', action='store_true', help='20 images')
    args = parser.parse_args()
    count = 20 if args.quick else args.images

    cam = DetCAM(str(REPO / 'demo' / 'rtmdet_shapes.py'), str(REPO / 'demo' / 'rtmdet_shapes.pth'))
    out = Path(tempfile.mkdtemp(prefix='mmdet_cam_report_'))
    writer = ResultWriter(out, cam.model.dataset_meta, describe_run(cam),
                          OutputSettings(html=True))
    boxes, progress = 0, ProgressBar(count)
    for k in range(count):
        image, _ = make_image(np.random.default_rng(k))
        result = cam(image)
        writer.write_image(result, f'image_{k:04d}')
        boxes += len(result)
        progress.update()
    start = time.perf_counter()
    index = write_report(out)
    report_seconds = time.perf_counter() - start
    megabytes = sum(f.stat().st_size for f in out.iterdir()) / 2**20

    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=shutil.which('chromium'),
            args=['--no-sandbox'] if os.geteuid() == 0 else [])
        page = browser.new_page(viewport={'width': 1280, 'height': 900})
        times = {}
        for name, url in (('index', index.as_uri()), ('page', (out / 'image_0000.html').as_uri())):
            times[name] = []
            for _ in range(args.loads):
                start = time.perf_counter()
                page.goto(url, wait_until='load')
                times[name].append(time.perf_counter() - start)
        browser.close()
    print(f'\n\n{count} images, {boxes} boxes, report pages written in {report_seconds:.2f} s\n')
    print('| images | boxes | load s | first page s | MB | MB per image |')
    print('|---:|---:|---:|---:|---:|---:|')
    print(f"| {count} | {boxes} | {statistics.median(times['index']):.2f} | "
          f"{statistics.median(times['page']):.2f} | {megabytes:.1f} | {megabytes / count:.3f} |")
    shutil.rmtree(out)


if __name__ == '__main__':
    main()
