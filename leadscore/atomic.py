"""Files replaced whole: readers (and a run after a crash) see the old content or the new,
never half of one — the write goes to a hidden file beside it, then a rename (atomic on
POSIX)."""

from __future__ import annotations

import os
from pathlib import Path


def write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
