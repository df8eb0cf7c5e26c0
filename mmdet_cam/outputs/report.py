"""An offline HTML report of a run: ``index.html`` (a filterable thumbnail grid) and one page
per image on which pointing at a box shows that box's map.

The pages are built from what :class:`~mmdet_cam.outputs.files.ResultWriter` wrote with
``html=True``: each image's JSON summary, ``<stem>_cam.jpg`` (the thumbnail),
``<stem>_original.jpg``, and the maps as JET images, ``<stem>_map<k>.jpg`` per box and
``<stem>_map_all.jpg`` (the maximum over boxes), and the evidence atlas (``atlas*.json``)
on the index when the run made one; for a video the same per frame, with a frame
slider on its page. A run that explained each image several ways (methods or layers, one
writer per ``panel``) gets the ways side by side on one page, one box selection for all.
Everything is referenced by relative path, so the folder opens from disk, moves as a whole and
needs no network. The templates (``mmdet_cam/outputs/templates``) are plain HTML, CSS and
JavaScript
rendered with Jinja2.
"""
import json
from pathlib import Path
from typing import List, Optional

from jinja2 import Environment, FileSystemLoader, select_autoescape
from mmengine.dist import barrier, is_main_process

from ..errors import InputNotFoundError
from .sink import Sink

TEMPLATES = Path(__file__).parent / 'templates'
# detection fields shown as table columns where the run has them
EXTRA_COLUMNS = (('energy_in_mask', 'energy in mask'), ('deletion', 'deletion'),
                 ('insertion', 'insertion'), ('oa', 'OA'), ('tag', 'tag'))


def report_entries(out_dir) -> List[dict]:
    """The explained images and videos in ``out_dir`` that have report images, in file-name
    order. Each entry is the summary of its (first) JSON file with ``stem`` (the image's or
    video's stem), ``frames`` (the ``stem`` of each frame's original image; one for an image),
    ``panels`` (per way of explaining it, in run order: ``name``, ``method``,
    ``target_layers`` and per frame the ``stem`` of its maps and its ``detections``) and
    ``thumbnail``. JSON files of a multi-panel run (``group`` and ``panel`` recorded, as
    :class:`~mmdet_cam.outputs.files.ResultWriter` writes them) join their image's entry."""
    entries = {}
    for path in sorted(Path(out_dir).glob('*.json')):
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(summary, dict):
            continue
        stem = summary.get('group', path.stem)
        if isinstance(summary.get('detections'), list):  # (atlas.json counts them: not an image)
            frames = [dict(stem=path.stem, detections=summary['detections'])]
            originals, thumbnail = [stem], f'{path.stem}_cam.jpg'
        elif 'frames' in summary and summary['frames']:
            frames = [dict(stem=frame_stem(path.stem, f['frame']), detections=f['detections'])
                      for f in summary['frames']]
            originals = [frame_stem(stem, f['frame']) for f in summary['frames']]
            thumbnail = f'{originals[0]}_original.jpg'
        else:
            continue
        if not (path.parent / f'{originals[0]}_original.jpg').is_file():
            continue
        entry = entries.setdefault(stem, dict(
            summary, stem=stem, frames=[dict(stem=s) for s in originals], thumbnail=thumbnail,
            panels=[]))
        entry.pop('detections', None)  # kept per panel
        entry['panels'].append(dict(
            name=summary.get('panel') or str(summary.get('method', '')),
            index=summary.get('panel_index', 0), method=summary.get('method'),
            target_layers=summary.get('target_layers') or [], frames=frames))
    for entry in entries.values():
        entry['panels'].sort(key=lambda panel: panel['index'])
    return list(entries.values())


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
            '(ResultWriter with OutputSettings(html=True))')
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)),
                      autoescape=select_autoescape(['html']))
    for entry in entries:
        detections = [d for frame in entry['panels'][0]['frames'] for d in frame['detections']]
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
    index.write_text(env.get_template('index.html').render(
        entries=entries, classes=classes, atlases=read_atlases(out_dir)), encoding='utf-8')
    return index


def read_atlases(out_dir: Path) -> List[dict]:
    """The evidence atlases of the run in ``out_dir`` (``atlas*.json``, one per panel)."""
    atlases = []
    for path in sorted(out_dir.glob('atlas*.json')):
        try:
            atlas = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(atlas, dict) and isinstance(atlas.get('classes'), dict):
            atlases.append(atlas)
    return atlases


def _script_json(value) -> str:
    """JSON safe inside a ``<script>`` element (no ``</`` to end it early)."""
    return json.dumps(value).replace('</', '<\\/')


class ReportSink(Sink):
    """The HTML report's pages, written when the run ends from what the files sink wrote
    (:func:`write_report`); in a distributed run by the main process once every process has
    written its images. Nothing is written for a run that explained no image."""

    def __init__(self, out_dir):
        self.out_dir = Path(out_dir)

    def close(self) -> Optional[str]:
        barrier()
        if not is_main_process():
            return None
        try:
            return f'report: {write_report(self.out_dir)}'
        except InputNotFoundError:  # no image was explained (all failed, or an interval)
            return None
