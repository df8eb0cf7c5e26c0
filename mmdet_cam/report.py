"""An offline HTML report of a run: ``index.html`` (a filterable thumbnail grid) and one page
per image on which pointing at a box shows that box's map.

The pages are built from what :class:`~mmdet_cam.outputs.ResultWriter` wrote with
``html=True``: each image's JSON summary, ``<stem>_cam.jpg`` (the thumbnail),
``<stem>_original.jpg``, and the maps as JET images, ``<stem>_map<k>.jpg`` per box and
``<stem>_map_all.jpg`` (the maximum over boxes). Everything is referenced by relative path,
so the folder opens from disk, moves as a whole and needs no network. The templates
(``mmdet_cam/templates``) are plain HTML, CSS and JavaScript rendered with Jinja2.
"""
import json
from pathlib import Path
from typing import List

from jinja2 import Environment, FileSystemLoader, select_autoescape

from .errors import InputNotFoundError

TEMPLATES = Path(__file__).parent / 'templates'


def report_entries(out_dir) -> List[dict]:
    """The image summaries (``<stem>.json`` with detections and report images) in
    ``out_dir``, in file-name order, each with its ``stem``."""
    entries = []
    for path in sorted(Path(out_dir).glob('*.json')):
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if (isinstance(summary, dict) and 'detections' in summary
                and (path.parent / f'{path.stem}_original.jpg').is_file()):
            entries.append(dict(summary, stem=path.stem))
    return entries


def write_report(out_dir) -> Path:
    """Write ``index.html`` and ``<stem>.html`` per image into ``out_dir`` (the output folder
    of a run made with ``html=True`` / ``--html``); returns the index's path."""
    out_dir = Path(out_dir)
    entries = report_entries(out_dir)
    if not entries:
        raise InputNotFoundError(
            f'no explained images to report in {out_dir}: write them with --html '
            '(ResultWriter(html=True))')
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)),
                      autoescape=select_autoescape(['html']))
    for entry in entries:
        entry['detections'] = [dict(d, area=(d['bbox'][2] - d['bbox'][0])
                                    * (d['bbox'][3] - d['bbox'][1])) for d in entry['detections']]
        entry['classes_scores'] = [[d['class_name'], d['score']] for d in entry['detections']]
    page = env.get_template('image.html')
    for k, entry in enumerate(entries):
        neighbours = dict(previous=entries[k - 1]['stem'] if k else None,
                          next=entries[k + 1]['stem'] if k + 1 < len(entries) else None)
        (out_dir / f"{entry['stem']}.html").write_text(
            page.render(entry=entry, data=_script_json(entry), **neighbours), encoding='utf-8')
    classes = sorted({d['class_name'] for e in entries for d in e['detections']})
    index = out_dir / 'index.html'
    index.write_text(env.get_template('index.html').render(entries=entries, classes=classes),
                     encoding='utf-8')
    return index


def _script_json(value) -> str:
    """JSON safe inside a ``<script>`` element (no ``</`` to end it early)."""
    return json.dumps(value).replace('</', '<\\/')
