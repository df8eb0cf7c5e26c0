"""The HTML report (``--html``) used as a person uses it: opened from disk in headless Chromium
(Debian's package) driven by Playwright, with clicks, keys and a slider."""
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

pytestmark = pytest.mark.slow  # subprocesses, Runners or a browser: `-m "not slow"` skips them

REPO = Path(__file__).parents[1]
TOOL = str(REPO / 'tools' / 'demo_gradcam.py')


@pytest.fixture(scope='module')
def report(tmp_path_factory):
    """The demo images explained by the CLI with --html, as the README runs it."""
    out = tmp_path_factory.mktemp('report')
    run = subprocess.run([sys.executable, TOOL, str(REPO / 'demo' / 'rtmdet_shapes.py'),
                          str(REPO / 'demo' / 'rtmdet_shapes.pth'), str(REPO / 'demo' / 'images'),
                          '--out-dir', str(out), '--html'], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert f'report: {out / "index.html"}' in run.stdout
    return out


@pytest.fixture
def page(browser, report):
    """A page that records every request and every console error."""
    opened = browser.new_page(viewport={'width': 1280, 'height': 900})
    opened.requests, opened.errors = [], []
    opened.on('request', lambda request: opened.requests.append(request.url))
    opened.on('console', lambda m: m.type == 'error' and opened.errors.append(m.text))
    opened.on('pageerror', lambda error: opened.errors.append(str(error)))
    yield opened
    assert not opened.errors, opened.errors
    outside = [url for url in opened.requests if not url.startswith(report.as_uri() + '/')]
    assert not outside, f'requests outside the report folder: {outside}'
    opened.close()


def summaries(report):
    return {path.stem: json.loads(path.read_text()) for path in sorted(report.glob('*.json'))}


def decoded(png: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR).astype(np.float32)


def test_the_index_links_every_image_and_filters_them(page, report):
    images = summaries(report)
    page.goto((report / 'index.html').as_uri())
    cards = page.locator('a.card')
    assert cards.count() == len(images) == 3
    for k in range(cards.count()):
        assert (report / cards.nth(k).get_attribute('href')).is_file()
    first = next(iter(images.values()))['detections'][0]
    name, score = first['class_name'], np.floor(first['score'] * 100) / 100
    page.select_option('[data-role=class]', name)
    page.fill('[data-role=min-score]', str(score))
    expected = sorted(stem for stem, summary in images.items()
                      if any(d['class_name'] == name and d['score'] >= score
                             for d in summary['detections']))
    visible = sorted(card.get_attribute('href')[:-len('.html')]
                     for card in cards.all() if card.is_visible())
    assert visible == expected and 0 < len(expected)
    page.fill('[data-role=min-score]', '1')
    assert not any(card.is_visible() for card in cards.all())
    page.select_option('[data-role=class]', '')
    page.fill('[data-role=min-score]', '0')
    assert all(card.is_visible() for card in cards.all())
    cards.first.click()
    assert page.url == (report / f'{sorted(images)[0]}.html').as_uri()


def free_point(boxes, k):
    """A point of box ``k`` (image pixels) that no box drawn above it covers (smaller boxes
    are drawn above larger ones)."""
    x1, y1, x2, y2 = boxes[k]
    area = (x2 - x1) * (y2 - y1)
    above = [b for j, b in enumerate(boxes)
             if j != k and (b[2] - b[0]) * (b[3] - b[1]) <= area]
    for fy in np.linspace(0.1, 0.9, 9):
        for fx in np.linspace(0.1, 0.9, 9):
            x, y = x1 + fx * (x2 - x1), y1 + fy * (y2 - y1)
            if not any(b[0] <= x <= b[2] and b[1] <= y <= b[3] for b in above):
                return x, y
    return None


def test_clicking_a_box_shows_that_boxs_map(page, report):
    stem, summary = next(iter(summaries(report).items()))
    boxes = [d['bbox'] for d in summary['detections']]
    assert len(boxes) >= 2
    page.goto((report / f'{stem}.html').as_uri())
    page.fill('[data-role=opacity]', '1')  # the map alone
    stage = page.locator('[data-role=stage]').bounding_box()
    height, width = summary['image_size']
    saved = [cv2.imread(str(report / f'{stem}_map{k}.jpg')).astype(np.float32)
             for k in range(len(boxes))]
    clicked = 0
    for k in range(len(boxes)):
        point = free_point(boxes, k)
        if point is None:
            continue
        page.mouse.click(stage['x'] + point[0] * stage['width'] / width,
                         stage['y'] + point[1] * stage['height'] / height)
        shown = page.locator('[data-role=map]')
        assert shown.get_attribute('src') == f'{stem}_map{k}.jpg'
        assert page.locator('[data-role=stage]').get_attribute('data-current') == str(k)
        page.wait_for_function('m => m.complete && m.naturalWidth > 0', arg=shown.element_handle())
        picture = decoded(shown.screenshot())
        differences = [np.abs(cv2.resize(s, picture.shape[1::-1]) - picture).mean() for s in saved]
        assert int(np.argmin(differences)) == k, differences  # its own map, not another's
        clicked += 1
    assert clicked >= 2


def test_the_slider_sets_the_opacity_and_the_toggle_shows_all_boxes(page, report):
    stem = next(iter(summaries(report)))
    page.goto((report / f'{stem}.html').as_uri())
    shown = page.locator('[data-role=map]')
    for value in ('0.8', '0.2'):
        page.fill('[data-role=opacity]', value)
        assert shown.evaluate('m => getComputedStyle(m).opacity') == value
    page.keyboard.press('ArrowRight')
    assert shown.get_attribute('src') == f'{stem}_map0.jpg'
    page.check('[data-role=fused]')
    assert shown.get_attribute('src') == f'{stem}_map_all.jpg'


def test_arrow_keys_step_through_the_boxes(page, report):
    stem, summary = next(iter(summaries(report).items()))
    count = len(summary['detections'])
    page.goto((report / f'{stem}.html').as_uri())
    stage = page.locator('[data-role=stage]')
    assert stage.get_attribute('data-current') == '-1'  # all boxes at first
    steps = [('ArrowRight', 0), ('ArrowRight', 1), ('ArrowLeft', 0), ('ArrowLeft', count - 1)]
    for key, expected in steps:
        page.keyboard.press(key)
        assert stage.get_attribute('data-current') == str(expected)
        assert page.locator('[data-role=map]').get_attribute('src') == f'{stem}_map{expected}.jpg'
        row = page.locator(f'tr[data-row="{expected}"]')
        assert 'selected' in row.get_attribute('class')


def test_a_screenshot_of_the_page_is_not_blank(page, report):
    stem = next(iter(summaries(report)))
    page.goto((report / f'{stem}.html').as_uri())
    picture = decoded(page.screenshot())
    assert picture.std() > 20 and len(np.unique(picture.reshape(-1, 3), axis=0)) > 100


@pytest.fixture(scope='module')
def video_report(tmp_path_factory):
    """A three-frame video of the demo images explained by the CLI with --html."""
    folder = tmp_path_factory.mktemp('video')
    writer = cv2.VideoWriter(str(folder / 'clip.mp4'), cv2.VideoWriter_fourcc(*'mp4v'), 5,
                             (320, 240))
    for name in ('shapes_1', 'shapes_2', 'shapes_3'):
        frame = cv2.imread(str(REPO / 'demo' / 'images' / f'{name}.jpg'))
        writer.write(cv2.resize(frame, (320, 240)))  # a writer drops frames of another size
    writer.release()
    run = subprocess.run([sys.executable, TOOL, str(REPO / 'demo' / 'rtmdet_shapes.py'),
                          str(REPO / 'demo' / 'rtmdet_shapes.pth'), str(folder / 'clip.mp4'),
                          '--out-dir', str(folder / 'out'), '--html'],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return folder / 'out'


def test_a_videos_page_steps_through_its_frames(browser, video_report):
    frames = json.loads((video_report / 'clip.json').read_text())['frames']
    assert len(frames) == 3
    page = browser.new_page()
    page.goto((video_report / 'index.html').as_uri())
    page.locator('a.card').click()
    for index in (2, 0, 1):
        page.fill('[data-role=frame]', str(index))
        stem = f'clip_f{index:05d}'
        shown = page.locator('[data-role=frame-image]').get_attribute('src')
        assert shown == f'{stem}_original.jpg'
        assert page.locator('[data-box]').count() == len(frames[index]['detections']) > 0
        assert page.locator('tr[data-row]').count() == len(frames[index]['detections'])
        page.click('h1')  # arrows on the focused slider step frames; elsewhere, boxes
        page.keyboard.press('ArrowRight')
        assert page.locator('[data-role=map]').get_attribute('src') == f'{stem}_map0.jpg'
        assert (video_report / f'{stem}_map0.jpg').is_file()
    page.close()


def test_boxes_are_drawn_in_the_datasets_palette(page, report):
    stem, summary = next(iter(summaries(report).items()))
    page.goto((report / f'{stem}.html').as_uri())
    labels = {d['label'] for d in summary['detections']}
    assert len(labels) > 1
    for d in summary['detections']:
        colour = page.locator(f'[data-box="{d["index"]}"]').evaluate(
            'box => getComputedStyle(box).borderTopColor')
        assert colour == 'rgb({}, {}, {})'.format(*summary['palette'][d['label']])


@pytest.fixture(scope='module')
def methods_report(tmp_path_factory):
    """One demo image explained with two methods in one run (--method gradcam++,odam)."""
    out = tmp_path_factory.mktemp('methods')
    run = subprocess.run([sys.executable, TOOL, str(REPO / 'demo' / 'rtmdet_shapes.py'),
                          str(REPO / 'demo' / 'rtmdet_shapes.pth'),
                          str(REPO / 'demo' / 'images' / 'shapes_1.jpg'), '--out-dir', str(out),
                          '--method', 'gradcam++,odam', '--html'], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return out


def test_several_methods_are_side_by_side_panels_with_one_selection(browser, methods_report):
    out, prefixes = methods_report, ('shapes_1.gradcampp', 'shapes_1.odam')
    detections = [json.loads((out / f'{p}.json').read_text())['detections'] for p in prefixes]
    page = browser.new_page(viewport={'width': 1600, 'height': 900})
    errors = []
    page.on('pageerror', lambda error: errors.append(str(error)))
    page.goto((out / 'index.html').as_uri())
    assert page.locator('a.card').count() == 1  # one image, not one card per method
    page.locator('a.card').click()
    panels = page.locator('[data-panel]')
    assert panels.count() == 2
    assert [panels.nth(i).locator('figcaption').inner_text() for i in (0, 1)] == \
        ['gradcam++', 'odam']
    first, second = (panels.nth(i).bounding_box() for i in (0, 1))
    assert second['x'] >= first['x'] + first['width'] - 1  # side by side
    assert abs(second['y'] - first['y']) < 1
    page.fill('[data-role=opacity]', '1')
    boxes = [d['bbox'] for d in detections[1]]
    k = max(j for j in range(len(boxes)) if free_point(boxes, j))
    x, y = free_point(boxes, k)
    stage = panels.nth(1).locator('[data-role=stage]').bounding_box()
    height, width = json.loads((out / f'{prefixes[1]}.json').read_text())['image_size']
    page.mouse.click(stage['x'] + x * stage['width'] / width,
                     stage['y'] + y * stage['height'] / height)
    for i, prefix in enumerate(prefixes):  # both panels show box k, each its own method's map
        shown = panels.nth(i).locator('[data-role=map]')
        assert shown.get_attribute('src') == f'{prefix}_map{k}.jpg'
        assert panels.nth(i).locator('[data-role=stage]').get_attribute('data-current') == str(k)
        page.wait_for_function('m => m.complete && m.naturalWidth > 0',
                               arg=shown.element_handle())
        picture = decoded(shown.screenshot())
        saved = [cv2.imread(str(out / f'{p}_map{k}.jpg')).astype(np.float32) for p in prefixes]
        differences = [np.abs(cv2.resize(s, picture.shape[1::-1]) - picture).mean()
                       for s in saved]
        assert int(np.argmin(differences)) == i, differences
    cells = page.locator(f'tr[data-row="{k}"] td').all_inner_texts()
    assert cells[5] == f"{detections[0][k]['energy_in_box']:.2f}"  # gradcam++'s energy
    assert cells[7] == f"{detections[1][k]['energy_in_box']:.2f}"  # odam's
    assert not errors, errors
    page.close()


@pytest.fixture(scope='module')
def mask_report(tmp_path_factory):
    """The instance demo's masks explained (``--target mask``) with --html."""
    out = tmp_path_factory.mktemp('mask_report')
    run = subprocess.run([sys.executable, TOOL, str(REPO / 'demo' / 'rtmdet-ins_shapes.py'),
                          str(REPO / 'demo' / 'rtmdet-ins_shapes.pth'),
                          str(REPO / 'demo' / 'images' / 'shapes_1.jpg'), '--target', 'mask',
                          '--out-dir', str(out), '--html'], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return out


def test_the_selected_instances_mask_is_outlined(browser, mask_report):
    summary = json.loads((mask_report / 'shapes_1.json').read_text())
    rows = summary['detections']
    height, width = summary['image_size']
    page = browser.new_page(viewport={'width': 1280, 'height': 900})
    page.goto((mask_report / 'shapes_1.html').as_uri())
    outline = page.locator('[data-role=outline]')
    assert outline.locator('polygon').count() == 0  # nothing selected
    assert 'energy in mask' in page.locator('thead').inner_text()
    stage = page.locator('[data-role=stage]').bounding_box()
    for k in (0, len(rows) - 1):
        page.locator(f'tr[data-row="{k}"]').hover()
        polygons = outline.locator('polygon')
        assert polygons.count() == len(rows[k]['mask_outline']) >= 1
        drawn = polygons.first.bounding_box()  # in page pixels: back to image pixels
        x1 = (drawn['x'] - stage['x']) * width / stage['width']
        y1 = (drawn['y'] - stage['y']) * height / stage['height']
        x2 = x1 + drawn['width'] * width / stage['width']
        y2 = y1 + drawn['height'] * height / stage['height']
        box = rows[k]['bbox']  # the mask lies about in its box (RTMDet-Ins does not crop it
        # to the box), and fills most of it
        assert box[0] - 6 <= x1 and box[1] - 6 <= y1 and x2 <= box[2] + 6 and y2 <= box[3] + 6
        assert (x2 - x1) * (y2 - y1) >= 0.5 * (box[2] - box[0]) * (box[3] - box[1])
    page.close()


@pytest.fixture(scope='module')
def atlas_report(tmp_path_factory):
    """Fresh evidence scenes explained by the CLI with --html --atlas."""
    from mmdet_cam.shapes import write_split
    root = tmp_path_factory.mktemp('evidence')
    write_split(root, 'val', 4, seed=4243, kind='evidence')
    out = tmp_path_factory.mktemp('atlas_report')
    run = subprocess.run([sys.executable, TOOL, str(REPO / 'demo' / 'rtmdet_evidence.py'),
                          str(REPO / 'demo' / 'rtmdet_evidence.pth'), str(root / 'val'),
                          '--out-dir', str(out), '--html', '--atlas'],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return out


def test_the_index_shows_the_atlas_and_its_class_filter_selects_one(browser, atlas_report):
    atlas = json.loads((atlas_report / 'atlas.json').read_text())
    page = browser.new_page(viewport={'width': 1280, 'height': 900})
    errors = []
    page.on('pageerror', lambda error: errors.append(str(error)))
    page.goto((atlas_report / 'index.html').as_uri())
    figures = page.locator('.atlas figure')
    assert figures.count() == len(atlas['classes'])
    for k in range(figures.count()):
        figure = figures.nth(k)
        name = figure.get_attribute('data-class')
        entry = atlas['classes'][name]
        assert name in figure.inner_text() and f"{entry['detections']} detection" in \
            figure.inner_text()
        if entry['picture']:  # the picture is loaded, not a broken image
            assert figure.locator('img').evaluate('img => img.naturalWidth') == 288
            assert f"{100 * entry['inside']:.0f}% in the box" in figure.inner_text()
    page.select_option('[data-role=class]', 'tagged')
    shown = [f.get_attribute('data-class') for f in figures.all() if f.is_visible()]
    assert shown == ['tagged']
    page.select_option('[data-role=class]', '')
    assert all(f.is_visible() for f in figures.all())
    assert not errors
    page.close()


def test_a_result_renders_itself_in_a_notebook(browser, demo_model):
    """What Jupyter shows for a ``DetCAMResult`` (``_repr_html_``), rendered headlessly: the
    overlay at the image's size, then one thumbnail per detection with its class and score."""
    from mmdet_cam import DetCAM
    result = DetCAM(demo_model)(str(REPO / 'demo' / 'images' / 'shapes_1.jpg'))
    assert len(result) >= 2
    overlay = cv2.imdecode(np.frombuffer(result._repr_png_(), np.uint8), cv2.IMREAD_COLOR)
    assert overlay.shape == result.image.shape and overlay.std() > 10
    page = browser.new_page(viewport={'width': 1280, 'height': 900})
    page.set_content(result._repr_html_())
    images = page.locator('img')
    assert images.count() == 1 + len(result)
    sizes = [img.evaluate('i => [i.naturalWidth, i.naturalHeight]') for img in images.all()]
    assert sizes[0] == [result.image.shape[1], result.image.shape[0]]
    assert all(height == 128 and width > 0 for width, height in sizes[1:])
    captions = page.locator('figcaption').all_inner_texts()
    names = result.dataset_meta['classes']
    for k, caption in enumerate(captions):
        label, score = int(result.detections.labels[k]), float(result.detections.scores[k])
        assert caption == f'{k}: {names[label]} {score:.2f}'
    page.close()
