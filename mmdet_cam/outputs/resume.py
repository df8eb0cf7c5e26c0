"""Resuming a run into the folder of an earlier one (``--resume``): an image whose JSON is
there (written last, atomically: its other files are complete) and records the same settings
is kept, not explained again; a folder made with other settings is refused before any work,
so nothing in it is overwritten."""
import hashlib
import json
from typing import List, Optional

from torch import nn

from ..errors import BadInputError

# options that do not change what a run writes
NOT_SETTINGS = ('img', 'out_dir', 'resume', 'show', 'list_layers', 'device', 'batch_size',
                'memory_budget', 'trust_checkpoint')


def run_settings(args) -> dict:
    """The command-line settings that decide an image's files, as its JSON records them."""
    settings = {key: value for key, value in sorted(vars(args).items())
                if key not in NOT_SETTINGS}
    return json.loads(json.dumps(settings))  # as read back: tuples become lists


def recorded(value):
    """``value`` as a run's settings record it (for ``json.dumps(..., default=recorded)``):
    a function or class by its import path, an object by its class's and its attributes,
    never by a ``repr`` holding a memory address (which would differ in every run and refuse
    every resume)."""
    if isinstance(value, type) or callable(value) and hasattr(value, '__qualname__'):
        return f'{value.__module__}.{value.__qualname__}'
    kind = type(value)
    attributes = {key: item for key, item in sorted(vars(value).items())
                  if not key.startswith('_')} if hasattr(value, '__dict__') else {}
    return dict(type=f'{kind.__module__}.{kind.__qualname__}', **attributes)


def weights_fingerprint(model: nn.Module) -> str:
    """A digest of ``model``'s weights and buffers: a test run records it among its settings,
    since the checkpoint's path says nothing when a training run rewrites it (and
    ``tools/test_cam.py`` loads it outside the Runner's ``load_from``)."""
    digest = hashlib.sha1()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def earlier_summaries(writers, stem: str) -> Optional[List[dict]]:
    """Each writer's JSON summary of ``stem`` from an earlier run, or None unless every
    writer (panel) has one."""
    paths = [writer.json_path(stem) for writer in writers]
    if not all(path.is_file() for path in paths):
        return None
    return [json.loads(path.read_text()) for path in paths]


def check_resumable(writers, stems, settings: dict) -> None:
    """Refuse (one line) to resume into a folder whose results for any of ``stems`` were made
    with other settings, naming the settings that differ."""
    for stem in stems:
        for writer in writers:
            path = writer.json_path(stem)
            if not path.is_file():
                continue
            try:
                recorded = json.loads(path.read_text()).get('run_settings')
            except (OSError, ValueError, AttributeError):
                recorded = None
            if recorded != settings:
                raise BadInputError(
                    f'--resume: {path} was made with other settings ('
                    f'{differences(recorded, settings)}); resume with those, write to another '
                    '--out-dir, or run without --resume to overwrite')


def differences(recorded: Optional[dict], settings: dict) -> str:
    if not isinstance(recorded, dict):
        return 'none recorded'
    keys = sorted(set(recorded) | set(settings))
    return ', '.join(f'{key}: {recorded.get(key)!r} then, {settings.get(key)!r} now'
                     for key in keys if recorded.get(key) != settings.get(key))


def detections_in(summary: dict) -> int:
    """The detections an image's (or a video's, over its frames) JSON summary lists."""
    if 'frames' in summary:
        return sum(len(frame['detections']) for frame in summary['frames'])
    return len(summary.get('detections', []))
