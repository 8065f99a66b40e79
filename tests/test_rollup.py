"""Feature rollups kept between nights give exactly the feature job's output at a UTC midnight,
night after night: late rows, new leads, events of earlier leads, sessions a late event joins,
merged intake loads, compacted rollups, a killed update, an intake that starts over."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from test_intake import contacts, deliver, events, leads

from leadscore.features import catalog as cat
from leadscore.features import job, rollup
from leadscore.nightly import intake, per_bucket

T = pd.Timestamp("2025-05-01", tz="UTC")


def night(data, cache, tmp_path, bucket_leads: int) -> list[dict]:
    """The intake brought up to the input folders; its kept segments."""
    with intake.Intake(data, cache, bucket_leads, spill=tmp_path / "spill").opened() as it:
        it.refresh()
        return it.state["segments"], it.buckets


#: the catalogue and a data-driven vocabulary (a type of its own beside "other")
FEATS = [*cat.CATALOG, *cat.vocabulary_features(["trade_in_valuation"])]


def assert_rollups_equal_the_job(cache, segments, n_buckets: int, as_of, feats=FEATS) -> None:
    for b in range(n_buckets):
        got = rollup.features(cache, b, segments, as_of, feats)
        assert got is not None, (b, as_of)
        con = per_bucket.bucket_connection(cache, b)
        want = job.compute(con, [as_of], feats)
        con.close()
        pd.testing.assert_frame_equal(job.to_pandas(got, feats), job.to_pandas(want, feats),
                                      check_exact=False, rtol=1e-12, obj=f"bucket {b}")


def test_rollups_equal_the_feature_job_night_after_night(sim_data, tmp_path, monkeypatch):
    """The simulated group's inputs as an operator's folders fill up: history, then a drop a
    night (rows by the day they were ingested, so late events land nights after they
    happened). Each night's features from the rollups equal the feature job's over every
    kept row, while each night reduces only its own load: the intake merges its loads and
    the rollups compact theirs on the way."""
    monkeypatch.setattr(intake, "MAX_SEGMENTS", 3)
    monkeypatch.setattr(rollup, "MAX_FILES", 2)
    frames = {t: pd.read_parquet(sim_data / f"{t}.parquet")
              for t in ("leads", "events", "contacts")}
    day = {"leads": frames["leads"]["created_at"],
           "events": frames["events"]["ingested_at"].fillna(frames["events"]["ts"]),
           "contacts": frames["contacts"]["ts"]}
    end = day["events"].max().floor("D")
    first = end - pd.Timedelta(days=6)
    data, cache = tmp_path / "data", tmp_path / "cache"
    absorbed = []
    real = rollup._Store._absorb
    monkeypatch.setattr(rollup._Store, "_absorb", lambda self, con, st, *a: absorbed.append(
        con.execute("SELECT count(*) FROM new_events").fetchone()[0]) or real(self, con, st, *a))
    late = 0
    for i in range(6):
        cut = first + pd.Timedelta(days=i)
        lo = None if i == 0 else cut - pd.Timedelta(days=1)
        drop = {t: df[(day[t] < cut) & (True if lo is None else day[t] >= lo)]
                for t, df in frames.items()}
        deliver(data, drop, f"{i:03d}")
        ev = drop["events"]
        late += int((ev["ts"] < cut - pd.Timedelta(days=1)).sum()) if i else 0
        segments, n_buckets = night(data, cache, tmp_path, bucket_leads=600)
        absorbed.clear()
        assert_rollups_equal_the_job(cache, segments, n_buckets, cut)
        if i:  # each bucket reduced the night's load only: all of them, the night's rows
            assert len(absorbed) == n_buckets and sum(absorbed) == len(ev)
    assert late > 0  # rows that were ingested days after they happened
    assert any(s.get("covers") for s in segments)  # the intake merged its loads
    state = json.loads((rollup.bucket_dir(cache, 0) / rollup.STATE).read_text())
    assert len(state["files"]) <= rollup.MAX_FILES and len(state["loads"]) == 6


def test_a_late_event_joins_two_sessions(tmp_path):
    """Two visits 50 minutes apart are two sessions; an event between them, ingested the
    next night, makes them one from the cutoff at which it is visible. The lead's other
    features follow the late event too."""
    data, cache = tmp_path / "data", tmp_path / "cache"
    deliver(data, {"leads": leads(("L1", "D1", 0), ("L2", "D1", 0)),
                   "events": events(("L1", "page_view", 34), ("L1", "config_view", 34 + 50 / 60),
                                    ("L2", "page_view", 30)),
                   "contacts": contacts(("L1", "phone", "no_answer", 35))}, "001")
    one = T + pd.Timedelta(days=2)
    segments, n = night(data, cache, tmp_path, bucket_leads=10)
    assert_rollups_equal_the_job(cache, segments, n, one)
    got = job.to_pandas(rollup.features(cache, 0, segments, one)).set_index("lead_id")
    assert got.loc["L1", "sessions_7d"] == 2

    ts = T + pd.Timedelta(hours=34 + 25 / 60)
    late = pd.DataFrame({"lead_id": ["L1"], "ts": [ts], "event_type": ["finance_calc"],
                         "model": ["X5"], "value": [None], "ingested_at": [one + pd.Timedelta(
                             hours=3)]})
    deliver(data, {"events": late, "contacts": contacts(("L1", "wechat", "replied", 50))}, "002")
    two = one + pd.Timedelta(days=1)
    segments, n = night(data, cache, tmp_path, bucket_leads=10)
    assert_rollups_equal_the_job(cache, segments, n, two)
    got = job.to_pandas(rollup.features(cache, 0, segments, two)).set_index("lead_id")
    assert got.loc["L1", "sessions_7d"] == 1
    assert got.loc["L1", "finance_calc_30d"] == 1 and got.loc["L1", "unanswered_streak"] == 0
    assert got.loc["L2", "sessions_7d"] == 1


def test_cutoffs_the_rollups_cannot_give_are_left_to_the_events(sim_data, tmp_path):
    """Not a UTC midnight, or earlier than the days kept: None, and rescore computes those
    from the events (same output as the rollups would have given)."""
    data, cache = tmp_path / "data", tmp_path / "cache"
    for t in ("leads", "events", "contacts"):
        deliver(data, {t: pd.read_parquet(sim_data / f"{t}.parquet")}, "001")
    segments, n = night(data, cache, tmp_path, bucket_leads=2000)
    end = pd.read_parquet(sim_data / "events.parquet")["ts"].max().floor("D")
    assert rollup.features(cache, 0, segments, end + pd.Timedelta(hours=6)) is None
    assert rollup.features(cache, 0, segments, end) is not None
    long_ago = end - pd.Timedelta(days=rollup.SLACK_DAYS + 1)
    assert rollup.features(cache, 0, segments, long_ago) is None
    assert_rollups_equal_the_job(cache, segments, n, end - pd.Timedelta(days=rollup.SLACK_DAYS))


def test_a_killed_update_leaves_the_kept_rollups_as_they_were(tmp_path, monkeypatch):
    """Files of an update that never committed are swept by the next, which redoes it."""
    data, cache = tmp_path / "data", tmp_path / "cache"
    deliver(data, {"leads": leads(("L1", "D1", 0)), "events": events(("L1", "page_view", 3)),
                   "contacts": contacts(("L1", "phone", "connected", 5))}, "001")
    segments, n = night(data, cache, tmp_path, bucket_leads=10)
    one = T + pd.Timedelta(days=1)
    assert rollup.features(cache, 0, segments, one) is not None
    root = rollup.bucket_dir(cache, 0)
    before = (root / rollup.STATE).read_text()
    deliver(data, {"leads": leads(("L2", "D1", 1)),
                   "events": events(("L1", "order", 30), ("L2", "page_view", 31))}, "002")
    segments, n = night(data, cache, tmp_path, bucket_leads=10)

    def killed(self, st):
        raise KeyboardInterrupt

    monkeypatch.setattr(rollup._Store, "_commit", killed)
    with pytest.raises(KeyboardInterrupt):
        rollup.features(cache, 0, segments, one + pd.Timedelta(days=1))
    assert (root / rollup.STATE).read_text() == before
    stray = {p.name for p in root.iterdir()} - {rollup.STATE}
    monkeypatch.undo()
    assert_rollups_equal_the_job(cache, segments, n, one + pd.Timedelta(days=1))
    state = json.loads((root / rollup.STATE).read_text())
    kept = {state["leads"], *state["files"], *(s["dir"] for s in state["sessions"].values())}
    assert {p.name for p in root.iterdir()} == kept | {rollup.STATE}
    assert not (stray - kept) & {p.name for p in root.iterdir()}


def test_an_intake_that_starts_over_rebuilds_the_rollups(tmp_path):
    """A kept input file changed: the intake validates everything again under new load ids,
    and the rollups start over from them instead of adding the rows twice."""
    data, cache = tmp_path / "data", tmp_path / "cache"
    deliver(data, {"leads": leads(("L1", "D1", 0)),
                   "events": events(("L1", "page_view", 3), ("L1", "page_view", 4))}, "001")
    segments, n = night(data, cache, tmp_path, bucket_leads=10)
    one = T + pd.Timedelta(days=1)
    rollup.features(cache, 0, segments, one)
    deliver(data, {"events": events(("L1", "page_view", 3))}, "001")  # one row less
    segments, n = night(data, cache, tmp_path, bucket_leads=10)
    assert_rollups_equal_the_job(cache, segments, n, one)
    got = job.to_pandas(rollup.features(cache, 0, segments, one)).set_index("lead_id")
    assert got.loc["L1", "page_view_1d"] == 1


def test_whole_history_is_kept_through_late_rows_and_compaction(tmp_path, monkeypatch):
    """Events 400, 100 and 10 days before the first night, and one 200 days back that is
    ingested a night later: the rollups keep every day of history (not only the lookback),
    compacted every night, and give the job's whole-history features night after night."""
    monkeypatch.setattr(rollup, "MAX_FILES", 1)
    data, cache = tmp_path / "data", tmp_path / "cache"
    one = T + pd.Timedelta(days=2)
    ev = events(("L1", "order", 48 - 400 * 24), ("L1", "service_visit", 48 - 100 * 24),
                ("L1", "page_view", 48 - 10 * 24), ("L2", "page_view", 30))
    ev["value"] = [30000.0, 500.0, None, None]
    deliver(data, {"leads": leads(("L1", "D1", -500), ("L2", "D1", 0)), "events": ev}, "001")
    segments, n = night(data, cache, tmp_path, bucket_leads=10)
    assert_rollups_equal_the_job(cache, segments, n, one)
    got = job.to_pandas(rollup.features(cache, 0, segments, one)).set_index("lead_id")
    assert got.loc["L1", "events_count_all"] == 3 and got.loc["L1", "orders_count_all"] == 1
    assert got.loc["L1", "orders_days_since_last"] == 400

    late = events(("L1", "service_visit", 48 - 200 * 24))
    late["value"] = [400.0]
    late["ingested_at"] = [one + pd.Timedelta(hours=12)]
    deliver(data, {"events": late}, "002")
    for i in (1, 2):
        cut = one + pd.Timedelta(days=i)
        segments, n = night(data, cache, tmp_path, bucket_leads=10)
        assert_rollups_equal_the_job(cache, segments, n, cut)
    got = job.to_pandas(rollup.features(cache, 0, segments, cut)).set_index("lead_id")
    assert got.loc["L1", "service_count_all"] == 2 and got.loc["L1", "service_value_sum"] == 900
    assert got.loc["L1", "service_typical_gap_days"] == 100
    assert got.loc["L1", "service_days_since_last"] == 102
    state = json.loads((rollup.bucket_dir(cache, 0) / rollup.STATE).read_text())
    assert len(state["files"]) == 1  # compacted, the old days kept


def test_vocabulary_types_come_from_the_kept_rollups(tmp_path, monkeypatch):
    """The rollups keep every event type by name: a vocabulary type's own features, and the
    other count of every non-standard type, come out as the job's, late rows and compaction
    included."""
    monkeypatch.setattr(rollup, "MAX_FILES", 1)
    data, cache = tmp_path / "data", tmp_path / "cache"
    one = T + pd.Timedelta(days=2)
    ev = events(("L1", "trade_in_valuation", 40), ("L1", "trade_in_valuation", 48 - 300 * 24),
                ("L1", "loan_preapproval", 20), ("L2", "page_view", 30))
    deliver(data, {"leads": leads(("L1", "D1", -500), ("L2", "D1", 0)), "events": ev}, "001")
    segments, n = night(data, cache, tmp_path, bucket_leads=10)
    assert_rollups_equal_the_job(cache, segments, n, one)
    late = events(("L1", "trade_in_valuation", 45))
    late["ingested_at"] = [one + pd.Timedelta(hours=12)]
    deliver(data, {"events": late}, "002")
    cut = one + pd.Timedelta(days=1)
    segments, n = night(data, cache, tmp_path, bucket_leads=10)
    assert_rollups_equal_the_job(cache, segments, n, cut)
    got = job.to_pandas(rollup.features(cache, 0, segments, cut, FEATS), FEATS)
    got = got.set_index("lead_id")
    assert got.loc["L1", "type__trade_in_valuation__7d"] == 2
    assert got.loc["L1", "type__trade_in_valuation__count_all"] == 3
    assert got.loc["L1", "other_events_30d"] == 3  # every non-standard type
