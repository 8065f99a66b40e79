"""Files replaced whole: readers (and a run after a crash) see the old content or the new,
never half of one — the write goes to a hidden file beside it, then a rename (atomic on
POSIX)."""

from __future__ import annotations

import os
from pathlib import Path


def write_text(path: Path, text: str, mode: int | None = None) -> None:
    """``mode`` (e.g. ``0o600`` for secrets' digests) is set on the hidden file before any
    byte is written, so the content is never readable under looser permissions."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    if mode is None:
        tmp.write_text(text)
    else:
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        os.fchmod(fd, mode)  # the umask may have narrowed it
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)
