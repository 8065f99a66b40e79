"""Files replaced whole: readers (and a run after a crash) see the old content or the new,
never half of one — the write goes to a hidden file beside it, then a rename (atomic on
POSIX)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd


def write_with(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` fills a hidden temporary file beside ``path``, which then replaces it.

    The temporary name is unique, so two processes writing the same file cannot mix their
    bytes; a failed write removes its temporary file and leaves ``path`` as it was.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str, mode: int | None = None) -> None:
    """``mode`` (e.g. ``0o600`` for secrets' digests) is set on the hidden file before any
    byte is written, so the content is never readable under looser permissions."""
    if mode is None:
        write_with(path, lambda tmp: tmp.write_text(text))
        return

    def write(tmp: Path) -> None:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        os.fchmod(fd, mode)  # the umask may have narrowed it
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())

    write_with(path, write)


def write_parquet(path: Path, frame: pd.DataFrame) -> None:
    write_with(path, lambda tmp: frame.to_parquet(tmp))
