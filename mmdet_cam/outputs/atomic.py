"""Files written whole or not at all: each is written under a hidden temporary name beside its
own and renamed when complete, so a run killed mid-write (out of memory, a pre-empted node,
Ctrl-C) leaves no half-written file under a real name, and a resumed run can trust what it
finds."""
import contextlib
import json
import os
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path) -> Iterator[Path]:
    """A temporary path to write ``path``'s content to (same folder and extension, so writers
    that go by the extension work); renamed to ``path`` when the block ends without error."""
    path = Path(path)
    temporary = path.with_name(f'.{path.stem}.part{path.suffix}')
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if temporary.exists():  # the block failed: no half-written file stays behind
            temporary.unlink()


def write_json(path, record) -> None:
    """``record`` as indented JSON at ``path``, atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(record, indent=2))
