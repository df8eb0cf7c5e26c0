"""An offline HTML report of a run: ``index.html`` (a filterable thumbnail grid) and one page
per image on which pointing at a box shows that box's map.

The pages are built from what :class:`~mmdet_cam.outputs.ResultWriter` wrote with
``html=True``: each image's JSON summary, ``<stem>_cam.jpg`` (the thumbnail),
``<stem>_original.jpg``, and the maps as JET images, ``<stem>_map<k>.jpg`` per box and
``<stem>_map_all.jpg`` (the maximum over boxes); for a video the same per frame, with a frame
slider on its page. Everything is referenced by relative path, so the folder opens from disk,
moves as a whole and needs no network. The templates (``mmdet_cam/templates``) are plain HTML,
CSS and JavaScript rendered with Jinja2.
"""
import json
from pathlib import Path
from typing import List

from jinja2 import Environment, FileSystemLoader, select_autoescape

from .errors import InputNotFoundError

TEMPLATES = Path(__file__).parent / 'templates'
# detection fields shown as table columns where the run has them
EXTRA_COLUMNS = (('deletion', 'deletion'), ('insertion', 'insertion'), ('oa', 'OA'),
                 ('tag', 'tag'))


def report_entries(out_dir) -> List[dict]:
    """The summaries of explained images and videos in ``out_dir`` that have report images
    (``<stem>.json``; a video's frames as ``<stem>_f<index>``), in file-name order, each with
    its ``stem``, its ``frames`` (``stem`` and ``detections`` of each, one for an image) and
    its ``thumbnail``."""
    entries = []
    for path in sorted(Path(out_dir).glob('*.json')):
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(summary, dict):
            continue
        if 'detections' in summary:
            frames = [dict(stem=path.stem, detections=summary['detections'])]
            thumbnail = f'{path.stem}_cam.jpg'
        elif 'frames' in summary and summary['frames']:
            frames = [dict(stem=frame_stem(path.stem, f['frame']), detections=f['detections'])
                      for f in summary['frames']]
            thumbnail = f"{frames[0]['stem']}_original.jpg"
        else:
            continue
        if (path.parent / f"{frames[0]['stem']}_original.jpg").is_file():
            entries.append(dict(summary, stem=path.stem, frames=frames, thumbnail=thumbnail))
    return entries


def frame_stem(stem: str, index: int) -> str:
    """The file stem of a video's frame in the report."""
    return f'{stem}_f{index:05d}'


def write_report(out_dir) -> Path:
    """Write ``index.html`` and ``<stem>.html`` per image or video into ``out_dir`` (the
    output folder of a run made with ``html=True`` / ``--html``); returns the index's path."""
    out_dir = Path(out_dir)
    entries = report_entries(out_dir)
    if not entries:
        raise InputNotFoundError(
            f'no explained images to report in {out_dir}: write them with --html '
            '(ResultWriter(html=True))')
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)),
                      autoescape=select_autoescape(['html']))
    for entry in entries:
        detections = [d for frame in entry['frames'] for d in frame['detections']]
        entry['count'] = len(detections)
        entry['classes_scores'] = [[d['class_name'], d['score']] for d in detections]
        entry['extra_columns'] = [(key, name) for key, name in EXTRA_COLUMNS
                                  if any(key in d for d in detections)]
    page = env.get_template('image.html')
    for k, entry in enumerate(entries):
        neighbours = dict(previous=entries[k - 1]['stem'] if k else None,
                          next=entries[k + 1]['stem'] if k + 1 < len(entries) else None)
        (out_dir / f"{entry['stem']}.html").write_text(
            page.render(entry=entry, data=_script_json(entry), **neighbours), encoding='utf-8')
    classes = sorted({name for e in entries for name, _ in e['classes_scores']})
    index = out_dir / 'index.html'
    index.write_text(env.get_template('index.html').render(entries=entries, classes=classes),
                     encoding='utf-8')
    return index


def _script_json(value) -> str:
    """JSON safe inside a ``<script>`` element (no ``</`` to end it early)."""
    return json.dumps(value).replace('</', '<\\/')
