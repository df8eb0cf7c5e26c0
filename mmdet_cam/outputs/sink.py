"""Where explained images go: a :class:`Sink` takes each image's result and is closed once at
the end of the run; :class:`Sinks` is the list a run writes to, built by
:func:`~mmdet_cam.outputs.build.build_sinks` from the output settings (the CLI and
``DetCAMHook`` alike)."""
from typing import List, Optional


class Sink:
    """One output of a run (files and JSON, the HTML report, ...)."""

    def add(self, result, stem: str, source: Optional[str] = None,
            extra: Optional[dict] = None) -> None:
        """One explained image: a ``DetCAMResult``, the image's stem (file name without
        extension), where it came from, and more entries for its record (``extra``)."""

    def add_frame(self, result) -> None:
        """One explained frame of a video (whose files the CLI writes itself)."""

    def end_video(self, stem: str) -> None:
        """After the last frame of the video named ``stem``, before its JSON (the mark of a
        finished video for a resumed run): keep what a resumed run needs to restore it."""

    def restore(self, stem: str) -> None:
        """An image that an earlier run with the same settings explained into the same folder
        (a resumed run skips it): take what that run wrote, as if it had been ``add``-ed."""

    def close(self) -> Optional[str]:
        """After the last image: finish the output; returns what to tell the user, if
        anything (e.g. where a report is)."""
        return None


class Sinks(List[Sink]):
    """The sinks of one way of explaining a run (one panel of a multi-method run): each image
    goes to every one. ``files`` is the files-and-JSON sink, which also draws (overlays,
    per-detection rows) for the CLI's console and videos and the hook's triage."""

    def __init__(self, sinks, files):
        super().__init__(sinks)
        self.files = files

    def add(self, result, stem: str, source: Optional[str] = None,
            extra: Optional[dict] = None) -> None:
        for sink in self:
            sink.add(result, stem, source, extra)

    def add_frame(self, result) -> None:
        for sink in self:
            sink.add_frame(result)

    def end_video(self, stem: str) -> None:
        for sink in self:
            sink.end_video(stem)

    def restore(self, stem: str) -> None:
        for sink in self:
            sink.restore(stem)

    def close(self) -> List[str]:
        """Close every sink; what they have to tell."""
        return [message for message in (sink.close() for sink in self) if message]
