"""The nightly intake: validated rows kept between runs, a night validating only its new files,
and always the same rows, quarantine and counts as validating every file again."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pandas as pd
import pytest

from leadscore import contract
from leadscore.nightly import intake, per_bucket

CLOCK = pd.Timestamp("2025-06-01", tz="UTC")
T = pd.Timestamp("2025-05-01", tz="UTC")


def leads(*rows) -> pd.DataFrame:
    """(lead_id, dealer_id, days after T)"""
    return pd.DataFrame({"lead_id": [r[0] for r in rows], "dealer_id": [r[1] for r in rows],
                         "created_at": [T + pd.Timedelta(days=r[2]) for r in rows],
                         "source": "website", "tz": None})


def events(*rows) -> pd.DataFrame:
    """(lead_id, event_type, hours after T)"""
    ts = [T + pd.Timedelta(hours=r[2]) for r in rows]
    return pd.DataFrame({"lead_id": [r[0] for r in rows], "ts": ts,
                         "event_type": [r[1] for r in rows], "model": "X5",
                         "value": None, "ingested_at": ts})


def contacts(*rows) -> pd.DataFrame:
    """(lead_id, channel, outcome, hours after T)"""
    return pd.DataFrame({"lead_id": [r[0] for r in rows], "ts":
                         [T + pd.Timedelta(hours=r[3]) for r in rows],
                         "channel": [r[1] for r in rows], "outcome": [r[2] for r in rows]})


NIGHT_1 = {
    "leads": leads(("L1", "D1", 0), ("L2", "D1", 1), ("L3", "D2", 2)),
    "events": events(("L1", "page_view", 1), ("L1", "page_view", 1),  # a duplicate
                     ("L2", "config_view", 30), ("L3", "finance_calc", 50),
                     ("NOPE", "page_view", 3)),  # an unknown lead, for good
    "contacts": contacts(("L1", "phone", "connected", 5), ("L2", "WeChat", "Replied", 40)),
}
NIGHT_2 = {
    "leads": leads(("L4", "D2", 3),  # new
                   ("L1", "D1", 0),  # the same as a kept lead: a duplicate
                   ("L2", "D9", 1)),  # another dealer for a kept lead: conflicting
    "events": events(("L1", "page_view", 1),  # the same as a kept event: a duplicate
                     ("L1", "order", 80),  # a kept lead's new event
                     ("L4", "page_view", 75), ("L4", "page_view", 75),  # a new lead's
                     ("L5", "page_view", 76),  # an unknown lead
                     ("NOPE", "page_view", 3)),  # a quarantined one again: a duplicate
    "contacts": contacts(("L1", "phone", "connected", 5),  # a kept one again: a duplicate
                         ("L2", "wechat", "replied", 40),  # equal to a kept one only once
                         ("L4", "sms", "ignored", 77)),  # cleaned: not an exact duplicate
}


def deliver(data, night: dict, name: str) -> None:
    """A night's drop: one new Parquet file per table, in each table's folder."""
    for table, df in night.items():
        (data / table).mkdir(parents=True, exist_ok=True)
        df.to_parquet(data / table / f"{name}.parquet", index=False)


def opened(data, tmp_path, root=None, **kw):
    kw = {"bucket_leads": 2, "clock": CLOCK, **kw}
    return intake.Intake(data, root or tmp_path / "cache", spill=tmp_path / "spill",
                         **kw).opened()


def refresh(data, tmp_path, **kw) -> intake.IntakeResult:
    with opened(data, tmp_path, **kw) as it:
        return it.refresh()


def kept(root, n_buckets: int) -> dict[str, list[tuple]]:
    """Every table's rows as the scoring reads them, over all buckets."""
    out: dict[str, list[tuple]] = {t: [] for t in contract.TABLES}
    for b in range(n_buckets):
        con = per_bucket.bucket_connection(root, b)
        for t in out:
            out[t] += con.sql(f"SELECT * FROM {t}").fetchall()
        con.close()
    return {t: sorted(rows, key=repr) for t, rows in out.items()}


def validated_at_once(data, tmp_path, clock=CLOCK) -> tuple[dict, dict, dict]:
    """What one validation of every file keeps, quarantines and counts."""
    ds = contract.load(data, clock=clock, quarantine_dir=tmp_path / "once")
    rows = {t: sorted(ds.con.sql(f"SELECT * FROM {t}").fetchall(), key=repr)
            for t in contract.TABLES}
    quarantine = {t: pd.read_parquet(tmp_path / "once" / f"{t}.parquet")
                  for t in contract.TABLES if (tmp_path / "once" / f"{t}.parquet").is_file()}
    counts = {t: (r.duplicates, r.quarantined) for t, r in ds.reports.items()}
    ds.con.close()
    return rows, quarantine, counts


def counts_of(root) -> dict:
    """The intake's duplicate and quarantine counts per table, summed over its loads."""
    out: dict = {}
    for seg in json.loads((root / intake.STATE).read_text())["segments"]:
        for t, c in seg["counts"].items():
            dup, q = out.get(t, (0, {}))
            out[t] = (dup + c["duplicates"], {r: q.get(r, 0) + c["quarantined"].get(r, 0)
                                              for r in {*q, *c["quarantined"]}})
    return out


def published(data) -> dict[str, pd.DataFrame]:
    q = data / "quarantine"
    return {t: pd.read_parquet(q / f"{t}.parquet") for t in contract.TABLES
            if (q / f"{t}.parquet").is_file()}


def assert_same_as_validated_at_once(data, tmp_path, res, clock=CLOCK) -> None:
    root = tmp_path / "cache"
    rows, quarantine, counts = validated_at_once(data, tmp_path, clock)
    assert kept(root, res.buckets) == rows
    assert counts_of(root) == counts
    got = published(data)
    assert got.keys() == quarantine.keys()
    for t, want in quarantine.items():
        pd.testing.assert_frame_equal(got[t], want, check_dtype=False)
    assert res.quarantined == sum(sum(q.values()) for _, q in counts.values())


# --------------------------------------------------------------------------- tests


def test_a_night_validates_only_its_new_files_and_keeps_what_validating_all_would(
        tmp_path, monkeypatch):
    data = tmp_path / "data"
    deliver(data, NIGHT_1, "2025-05-01")
    first = refresh(data, tmp_path)
    assert first.mode == "start" and first.buckets == 2

    deliver(data, NIGHT_2, "2025-05-02")
    seen = []
    real = contract.load
    monkeypatch.setattr(contract, "load",
                        lambda *a, **kw: seen.append(kw["files"]) or real(*a, **kw))
    second = refresh(data, tmp_path)
    monkeypatch.setattr(contract, "load", real)
    assert second.mode == "append" and second.new_files == 3
    assert [{t: [p.name for p in fs] for t, fs in f.items()} for f in seen] == [
        {t: ["2025-05-02.parquet"] for t in contract.TABLES}]
    assert second.buckets == first.buckets  # buckets are sized once
    assert_same_as_validated_at_once(data, tmp_path, second)
    # the cross-night cases were all met: duplicates of kept rows and a conflicting lead
    q = counts_of(tmp_path / "cache")
    assert q["leads"] == (1, {"conflicting_lead_id": 1})
    assert q["events"] == (4, {"unknown_lead": 2})
    assert q["contacts"] == (1, {})

    again = refresh(data, tmp_path)
    assert again.mode == "unchanged" and again.new_files == 0
    assert_same_as_validated_at_once(data, tmp_path, again)


@pytest.mark.parametrize("case", ["changed", "sorts_before", "bucket_size", "outgrown",
                                  "lead_arrives_for_quarantined_rows", "clock_passes"])
def test_when_appending_could_differ_everything_is_validated_again(tmp_path, case):
    data = tmp_path / "data"
    deliver(data, NIGHT_1, "2025-05-01")
    if case == "clock_passes":  # an event stamped a day after the first run's clock
        late = events(("L1", "page_view", 24 * 31 + 20))
        late.to_parquet(data / "events" / "2025-05-01b.parquet", index=False)
    assert refresh(data, tmp_path).mode == "start"
    kw, clock = {}, CLOCK
    if case == "changed":
        leads(("L1", "D7", 0)).to_parquet(data / "leads" / "2025-05-01.parquet", index=False)
    elif case == "sorts_before":
        deliver(data, {"events": NIGHT_2["events"]}, "2025-04-30")
    elif case == "bucket_size":
        kw = {"bucket_leads": 3}
    elif case == "outgrown":  # 3 + 4 new leads > twice the 3 buckets' planned 1 lead each
        kw = {"bucket_leads": 1}
        assert refresh(data, tmp_path, **kw).buckets == 3
        deliver(data, {"leads": leads(*[(f"L{i}", "D1", 3) for i in range(7, 11)])},
                "2025-05-02")
    elif case == "lead_arrives_for_quarantined_rows":
        deliver(data, {"leads": leads(("NOPE", "D1", 0))}, "2025-05-02")
    elif case == "clock_passes":
        hour_later = refresh(data, tmp_path, clock=CLOCK + pd.Timedelta(hours=1))
        assert hour_later.mode == "unchanged"  # still in the future: nothing to redo
        clock = CLOCK + pd.Timedelta(days=2)
    res = refresh(data, tmp_path, clock=clock, **kw)
    assert res.mode == "start"
    assert_same_as_validated_at_once(data, tmp_path, res, clock)


def test_a_run_killed_before_it_records_its_load_leaves_nothing_behind(tmp_path, monkeypatch):
    data = tmp_path / "data"
    deliver(data, NIGHT_1, "2025-05-01")
    refresh(data, tmp_path)
    root = tmp_path / "cache"
    before = sorted(p.relative_to(root) for p in root.rglob("*.parquet"))
    deliver(data, NIGHT_2, "2025-05-02")

    def killed(self, state):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(intake.Intake, "_commit", killed)
    with pytest.raises(KeyboardInterrupt):
        refresh(data, tmp_path)
    assert len(list(root.rglob("*.parquet"))) > len(before)  # the new load's files, unlisted
    monkeypatch.undo()
    with opened(data, tmp_path) as it:  # opening sweeps them away
        assert sorted(p.relative_to(root) for p in root.rglob("*.parquet")) == before
        res = it.refresh()
    assert res.mode == "append"
    assert_same_as_validated_at_once(data, tmp_path, res)


def test_loads_are_merged_into_one_after_a_few_nights(tmp_path, monkeypatch):
    monkeypatch.setattr(intake, "MAX_SEGMENTS", 2)
    data = tmp_path / "data"
    deliver(data, NIGHT_1, "2025-05-01")
    refresh(data, tmp_path)
    deliver(data, NIGHT_2, "2025-05-02")
    assert refresh(data, tmp_path).mode == "append"
    state = json.loads((tmp_path / "cache" / intake.STATE).read_text())
    assert len(state["segments"]) == 2
    deliver(data, {"events": events(("L4", "config_view", 90), ("L9", "page_view", 91))},
            "2025-05-03")
    res = refresh(data, tmp_path)
    state = json.loads((tmp_path / "cache" / intake.STATE).read_text())
    # the two earlier loads as one (which says so), tonight's apart
    assert res.mode == "append" and len(state["segments"]) == 2
    merged, newest = state["segments"]
    assert len(merged["covers"]) == 2 and newest["id"] not in merged["covers"]
    for b in range(res.buckets):  # a file per table and bucket for each
        for t in contract.TABLES:
            assert len(list((tmp_path / "cache" / t / f"bucket={b}").glob("*"))) <= 2
    assert_same_as_validated_at_once(data, tmp_path, res)


def test_one_cache_serves_one_job_at_a_time(tmp_path):
    data = tmp_path / "data"
    deliver(data, NIGHT_1, "2025-05-01")
    with (opened(data, tmp_path), pytest.raises(intake.IntakeBusy, match="in use"),
          opened(data, tmp_path)):
        pass
    assert refresh(data, tmp_path).mode == "start"  # the lock went with the first job


def test_a_cache_that_cannot_be_written_is_a_clear_error(tmp_path):
    data = tmp_path / "data"
    deliver(data, NIGHT_1, "2025-05-01")
    (tmp_path / "a-file").write_text("")
    with (pytest.raises(intake.IntakeError, match="--cache"),
          opened(data, tmp_path, root=tmp_path / "a-file" / "cache")):
        pass


def test_a_new_file_wrong_as_a_whole_stops_the_night_and_leaves_the_kept_rows(tmp_path):
    data = tmp_path / "data"
    deliver(data, NIGHT_1, "2025-05-01")
    first = refresh(data, tmp_path)
    before = kept(tmp_path / "cache", first.buckets)
    NIGHT_2["events"].drop(columns=["ts"]).to_parquet(data / "events" / "2025-05-02.parquet")
    with pytest.raises(contract.ContractError, match=r"events/2025-05-02.parquet: missing "
                                                     r"column 'ts'"):
        refresh(data, tmp_path)
    with opened(data, tmp_path) as it:
        assert kept(tmp_path / "cache", it.buckets) == before
        assert not list((tmp_path / "cache").glob(".q-*"))
    deliver(data, NIGHT_2, "2025-05-02")  # the file, corrected
    res = refresh(data, tmp_path)
    assert res.mode == "append"
    assert_same_as_validated_at_once(data, tmp_path, res)


def test_a_bucket_is_never_planned_as_smaller_than_it_is(tmp_path, monkeypatch):
    """DuckDB sizes a scan of several files from the first; a night's small file must not be
    that one, or the feature job's joins are planned for a hundredth of the rows. (The
    segment ids are fixed so that the small file's name sorts first.)"""
    ids = iter(["f" * 32, "0" * 32])
    monkeypatch.setattr(intake.uuid, "uuid4", lambda: SimpleNamespace(hex=next(ids)))
    data = tmp_path / "data"
    history = events(*[(f"L{1 + i % 3}", "page_view", i) for i in range(500)])
    deliver(data, {**NIGHT_1, "events": history}, "2025-05-01")
    refresh(data, tmp_path)
    deliver(data, {"events": events(("L1", "order", 600))}, "2025-05-02")
    res = refresh(data, tmp_path)
    assert res.mode == "append" and res.buckets == 2
    checked = 0
    for b in range(res.buckets):
        folder = tmp_path / "cache" / "events" / f"bucket={b}"
        files = sorted(p.name for p in folder.glob("*.parquet"))
        if len(files) < 2:
            continue
        checked += 1
        con = per_bucket.bucket_connection(tmp_path / "cache", b)
        (n,) = con.execute("SELECT count(*) FROM events").fetchone()
        plan = con.execute("EXPLAIN SELECT * FROM events").fetchall()[0][1]
        con.close()
        estimate = int(re.search(r"~([\d,]+) rows", plan).group(1).replace(",", ""))
        assert n > 100 and estimate >= n, (files, n, estimate)
    assert checked == 1  # the bucket of L1, where tonight's order landed
