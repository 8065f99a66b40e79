"""The online feature store: the latest feature row per lead, for lookups by id.

An embedded SQLite file (no server), written by the feature job and read by the HTTP service.
A refresh writes a new file beside the old one and renames it into place, so a reader sees the
old snapshot or the new one, never half of each; readers reopen when the file changes.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

DEFAULT_STORE = Path("features.db")
#: ids per query: SQLite limits the number of bound parameters (999 in older builds)
_MAX_PARAMS = 900


def _clean(v):
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    if isinstance(v, pd.Timestamp):
        return v.isoformat()
    return v


def write(frame: pd.DataFrame, path: Path = DEFAULT_STORE) -> int:
    """Replace the store with the latest row per lead of ``frame`` (feature job output)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    latest = frame.sort_values("as_of").drop_duplicates("lead_id", keep="last")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    con = sqlite3.connect(tmp)
    try:
        con.execute(
            "CREATE TABLE features (lead_id TEXT PRIMARY KEY, dealer_id TEXT NOT NULL, "
            "as_of TEXT NOT NULL, row TEXT NOT NULL)"
        )
        cols = [c for c in latest.columns if c not in ("lead_id", "dealer_id", "as_of")]
        as_of = pd.to_datetime(latest["as_of"], utc=True)
        records = latest[cols].astype(object).to_dict(orient="records")
        con.executemany(
            "INSERT INTO features VALUES (?, ?, ?, ?)",
            (
                (str(lid), str(did), ts.isoformat(),
                 json.dumps({k: _clean(v) for k, v in rec.items()}))
                for lid, did, ts, rec in zip(latest["lead_id"], latest["dealer_id"], as_of,
                                             records, strict=True)
            ),
        )
        con.commit()
    finally:
        con.close()
    os.replace(tmp, path)
    return len(latest)


class ReadOnlyFile:
    """A SQLite file written by a job and replaced atomically: one read-only connection per
    thread, reopened when the file is replaced; None while it is missing."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._local = threading.local()

    def _con(self) -> sqlite3.Connection | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        stamp = (st.st_ino, st.st_mtime_ns)
        con = getattr(self._local, "con", None)
        if con is None or self._local.stamp != stamp:
            if con is not None:
                con.close()
            con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True,
                                  check_same_thread=False)
            self._local.con, self._local.stamp = con, stamp
        return con


class OnlineStore(ReadOnlyFile):
    """Read side: thread-safe lookups, reopened when the file is replaced."""

    def __init__(self, path: Path = DEFAULT_STORE):
        super().__init__(path)

    @property
    def available(self) -> bool:
        return self.path.is_file()

    def get_records(self, lead_ids: Sequence[str], dealers: set[str] | frozenset[str] | None = None
                    ) -> list[dict]:
        """Feature records (``lead_id``, ``dealer_id``, ``as_of`` as ISO text, then the
        features) for the ids that exist and belong to ``dealers`` when given."""
        con = self._con()
        if con is None or not lead_ids:
            return []
        recs = []
        for start in range(0, len(lead_ids), _MAX_PARAMS):
            chunk = list(lead_ids[start: start + _MAX_PARAMS])
            q = ",".join("?" * len(chunk))
            rows = con.execute(
                f"SELECT lead_id, dealer_id, as_of, row FROM features WHERE lead_id IN ({q})",
                chunk,
            ).fetchall()
            for lid, did, as_of, row in rows:
                if dealers is not None and did not in dealers:
                    continue
                recs.append({"lead_id": lid, "dealer_id": did, "as_of": as_of,
                             **json.loads(row)})
        return recs

    def get(self, lead_ids: Sequence[str], dealers: set[str] | None = None) -> pd.DataFrame:
        """Feature rows for the ids that exist (and belong to ``dealers`` when given)."""
        df = pd.DataFrame(self.get_records(lead_ids, dealers))
        if not df.empty:
            df["as_of"] = pd.to_datetime(df["as_of"], utc=True)
        return df
