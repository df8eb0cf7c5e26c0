"""The visualizer sink: each explained image's overlay, and the atlas pictures at the end of the
run, sent to the backends of mmengine's ``Visualizer`` (TensorBoard, W&B, MLflow, ... as the
config's ``vis_backends`` names them), next to mmdet's own images."""
import json
from pathlib import Path
from typing import Callable, List, Optional

import mmcv
from mmengine.dist import is_main_process
from mmengine.visualization import LocalVisBackend

from .sink import Sink


def remote_backends(visualizer) -> List:
    """The backends of ``visualizer`` other than ``LocalVisBackend``: the files sink already
    writes the images to disk, so a local backend would only copy them."""
    # mmengine's Visualizer has no public list of its backends, only get_backend(name)
    backends = getattr(visualizer, '_vis_backends', {}) or {}
    return [b for b in backends.values() if not isinstance(b, LocalVisBackend)]


class VisualizerSink(Sink):
    """Sends overlays to a visualizer's backends (in a distributed run, those of the images
    the main process explains, as mmdet's ``DetVisualizationHook`` does).

    Args:
        backends: the visualizer's backends to write to (:func:`remote_backends`).
        render: a result's overlay, BGR (the files sink's ``render``).
        method: the method's name, part of every tag (``cam/<method>/<image stem>``).
        out_dir: where the atlas sink wrote ``atlas.json`` and its pictures, sent at the end
            as ``cam/<method>/atlas/<class>``.
    """

    def __init__(self, backends, render: Callable, method: str, out_dir):
        self.backends, self.render, self.method = backends, render, method
        self.out_dir = Path(out_dir)
        self.step = 0

    def send(self, tag: str, image_bgr) -> None:
        for backend in self.backends:
            backend.add_image(tag, mmcv.bgr2rgb(image_bgr), step=self.step)

    def add(self, result, stem: str, source: Optional[str] = None,
            extra: Optional[dict] = None) -> None:
        if is_main_process():
            self.send(f'cam/{self.method}/{stem}', self.render(result))
            self.step += 1

    def close(self) -> Optional[str]:
        if not is_main_process():
            return None
        atlas = self.out_dir / 'atlas.json'
        sent = 0
        if atlas.is_file():  # written by the atlas sink, closed before this one
            for name, entry in json.loads(atlas.read_text())['classes'].items():
                if entry.get('picture'):
                    self.send(f'cam/{self.method}/atlas/{name}',
                              mmcv.imread(str(self.out_dir / entry['picture'])))
                    sent += 1
        for backend in self.backends:  # the runner never closes its visualizer: flush
            flush = getattr(backend.experiment, 'flush', None)  # TensorBoard's writer has one
            if flush is not None:
                flush()
        names = ', '.join(type(b).__name__ for b in self.backends)
        return (f'{self.step} overlays' + (f' and {sent} atlas pictures' if sent else '')
                + f' sent to {names}')
