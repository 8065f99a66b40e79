"""The last nightly run's score, delta and changes per lead, for ``/score`` by lead id.

``rescore --store PATH`` writes it beside the online feature store (:func:`beside`) once a
run is complete: an SQLite file written whole under a hidden name and renamed into place, as
the store is, so the service reads the old table or the new one, never half of each. The
service reads it by lead id, only for the tenant's dealers; a missing file means "unknown".
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from leadscore.scoring.scorer import iso_utc
from leadscore.serving.store import ReadOnlyFile

_MAX_PARAMS = 900
COLUMNS = ("lead_id", "dealer_id", "as_of", "lead_score", "score_delta", "trend", "changes")


def beside(store: Path) -> Path:
    """The last-night file of an online store file: ``features.db`` → ``features.last-night.db``."""
    store = Path(store)
    return store.with_name(f"{store.stem}.last-night{store.suffix or '.db'}")


def write(run: Path, path: Path) -> int:
    """Replace ``path`` with the scored leads of the complete rescore output ``run``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df = pd.read_parquet(run, columns=list(COLUMNS))
    df = df[df["lead_score"].notna()]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    con = sqlite3.connect(tmp)
    try:
        con.execute("CREATE TABLE last_night (lead_id TEXT PRIMARY KEY, dealer_id TEXT NOT NULL,"
                    " as_of TEXT NOT NULL, lead_score INTEGER NOT NULL, score_delta INTEGER,"
                    " trend TEXT, changes TEXT)")
        delta = df["score_delta"].astype(object).where(df["score_delta"].notna(), None)
        con.executemany("INSERT INTO last_night VALUES (?, ?, ?, ?, ?, ?, ?)", zip(
            df["lead_id"].astype(str), df["dealer_id"].astype(str),
            map(iso_utc, df["as_of"]), df["lead_score"].astype(int).tolist(),
            [None if v is None else int(v) for v in delta],
            df["trend"].astype(object).where(df["trend"].notna(), None),
            df["changes"].astype(object).where(df["changes"].notna(), None), strict=True))
        con.commit()
    finally:
        con.close()
    os.replace(tmp, path)
    return len(df)


class LastNight(ReadOnlyFile):
    """Read side: thread-safe lookups, reopened when the file is replaced; nothing when it
    is missing or unreadable (the service keeps serving)."""

    def get(self, lead_ids: Sequence[str], dealers: frozenset[str] | set[str] | None = None
            ) -> dict[str, dict]:
        """``lead_id`` → ``{lead_score, score_delta, trend, changes, as_of}`` for the ids
        the table holds among ``dealers`` (when given)."""
        if not lead_ids:
            return {}
        try:
            con = self._con()
            if con is None:
                return {}
            out = {}
            for start in range(0, len(lead_ids), _MAX_PARAMS):
                chunk = list(lead_ids[start: start + _MAX_PARAMS])
                q = ",".join("?" * len(chunk))
                for lid, did, as_of, score, delta, trend, changes in con.execute(
                        f"SELECT {', '.join(COLUMNS)} FROM last_night WHERE lead_id IN ({q})",
                        chunk):
                    if dealers is not None and did not in dealers:
                        continue
                    out[lid] = {"lead_score": score, "score_delta": delta, "trend": trend,
                                "changes": json.loads(changes) if changes else [],
                                "as_of": as_of}
            return out
        except sqlite3.Error:  # replaced under an open connection, or not a table of ours
            self._local.con = None
            return {}
