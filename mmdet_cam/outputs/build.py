"""The sinks a run's output settings ask for (the CLI and ``DetCAMHook`` alike)."""
from typing import Optional

from .atlas import AtlasSink
from .files import ResultWriter, panel_slug
from .report import ReportSink
from .sink import Sinks


def build_sinks(out_dir, dataset_meta: dict, run: dict, output, panel: Optional[str] = None,
                panel_index: int = 0) -> Sinks:
    """The sinks the output settings ask for: the files and JSON (always; with ``html``, the
    report's images too), with ``atlas`` the evidence atlas (one per panel) and, for the first
    panel with ``html``, the report's pages (after the atlas, which its index shows).

    Args:
        out_dir: existing, writable folder.
        dataset_meta: ``classes`` and ``palette``.
        run: the run's description (:func:`~mmdet_cam.outputs.run.describe_run`).
        output: an :class:`~mmdet_cam.settings.OutputSettings`.
        panel, panel_index: the way of explaining in a multi-panel run (None: the only one).
    """
    files = ResultWriter(out_dir, dataset_meta, run, output, panel=panel,
                         panel_index=panel_index)
    sinks = [files]
    if output.atlas:  # first: an image's atlas part is written before its JSON, which says done
        sinks.insert(0, AtlasSink(out_dir, dataset_meta, run,
                                  name=f'atlas.{panel_slug(panel)}' if panel else 'atlas'))
    if output.html and panel_index == 0:  # one report for all panels
        sinks.append(ReportSink(out_dir))
    return Sinks(sinks, files)
