"""The training feature cache: a killed run or a damaged entry never breaks later runs."""

from __future__ import annotations

import logging

import pandas as pd
import pytest

from leadscore import contract, models
from leadscore.training import dataset

T0 = pd.Timestamp("2026-03-01", tz="UTC")


@pytest.fixture
def tiny():
    con = contract.connect()
    leads = pd.DataFrame({"lead_id": [f"L{i}" for i in range(8)], "dealer_id": "D1",
                          "created_at": T0 - pd.Timedelta(days=20), "source": "website"})
    ev = pd.DataFrame({"lead_id": [f"L{i}" for i in range(8)] * 2,
                       "event_type": ["page_view"] * 8 + ["order"] * 4 + ["page_view"] * 4,
                       "ts": [T0 - pd.Timedelta(days=2)] * 8 + [T0 + pd.Timedelta(days=50)] * 8})
    contract.register_frames(con, leads, ev)
    yield con
    con.close()


def _build(con, cache):
    return dataset.build(con, models.get("conversion"), split="entity", as_of=[T0],
                         feature_cache=cache)


def test_a_truncated_cache_entry_is_recomputed(tiny, tmp_path, caplog):
    cache = tmp_path / "cache" / "features-x.parquet"
    fresh = _build(tiny, cache).frame
    data = cache.read_bytes()
    cache.write_bytes(data[: len(data) // 2])  # what a run killed mid-write used to leave
    with caplog.at_level(logging.WARNING, logger="leadscore.training.dataset"):
        again = _build(tiny, cache).frame
    pd.testing.assert_frame_equal(again, fresh)
    assert "unreadable" in caplog.text
    assert len(pd.read_parquet(cache)) == 8  # rewritten whole, and read from now on
    # (Parquet gives an empty category column object categories instead of str)
    pd.testing.assert_frame_equal(_build(tiny, cache).frame, fresh, check_dtype=False,
                                  check_categorical=False)


def test_a_run_killed_while_writing_the_cache_leaves_no_entry(tiny, tmp_path, monkeypatch):
    cache = tmp_path / "features-x.parquet"

    def killed(self, path, *a, **k):
        with open(path, "wb") as fh:
            fh.write(b"PAR1" + b"\0" * 100)  # half a file, then the process dies
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(pd.DataFrame, "to_parquet", killed)
        with pytest.raises(KeyboardInterrupt):
            _build(tiny, cache)
    assert list(tmp_path.iterdir()) == []  # neither an entry nor a temporary file
    assert len(_build(tiny, cache).frame) == 8
    assert cache.is_file()
