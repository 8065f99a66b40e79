"""The input data contract: files in, clean tables + quarantine out, whole-file errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from leadscore import contract
from leadscore.contract import ContractError

CLOCK = pd.Timestamp("2025-06-01", tz="UTC")


def write(folder, table: str, df: pd.DataFrame, fmt: str = "csv"):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{table}.{fmt}"
    if fmt == "csv":
        df.to_csv(path, index=False)
    else:
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path)
    return path


def load(folder, tmp_path, **kw):
    return contract.load(folder, clock=CLOCK, quarantine_dir=tmp_path / "quarantine", **kw)


def frame(ds, table: str) -> pd.DataFrame:
    return ds.frame(table).sort_values(list(ds.frame(table).columns)).reset_index(drop=True)


# --------------------------------------------------------------------------- bad rows

LEADS = pd.DataFrame(
    [
        # lead_id, dealer_id, created_at, source, intended_model, city, budget, tz
        ["L1", "D1", "2025-01-01T00:00:00Z", "website", "X5", "Shanghai", "300000",
         "Asia/Shanghai"],
        ["", "D1", "2025-01-01T00:00:00Z", "website", None, None, None, None],  # missing id
        ["L2", "  ", "2025-01-01T00:00:00Z", "website", None, None, None, None],  # blank dealer
        ["L3", "D1", "last tuesday", "website", None, None, None, None],  # unparseable
        ["L4", "D1", "2025-01-02T00:00:00Z", "douyin", None, None, None, "Mars/Olympus"],
        ["L1", "D2", "2025-01-01T00:00:00Z", "website", None, None, None, None],  # conflict
        ["L5", "D1", "2025-07-01T00:00:00Z", "website", None, None, None, None],  # future
        ["L1", "D1", "2025-01-01T00:00:00Z", "website", "X5", "Shanghai", "300000",
         "Asia/Shanghai"],  # exact duplicate of row 0
        ["L6", "D2", "2025-02-01 08:00:00+08:00", "showroom", None, None, None, None],
        ["L7", "D2", "2025-02-01T00:00:00Z", "showroom", None, None, "lots", None],
        ["L8", "D2", "2025-02-01T00:00:00Z", "referral", None, None, "1.5e5", "Europe/Berlin"],
    ],
    columns=["lead_id", "dealer_id", "created_at", "source", "intended_model", "city",
             "budget", "tz"],
)
LEAD_REASONS = {1: "missing_lead_id", 2: "missing_dealer_id", 3: "unparseable_created_at",
                4: "unknown_tz", 5: "conflicting_lead_id", 6: "created_at_after_clock",
                9: "unparseable_budget"}

EVENTS = pd.DataFrame(
    [
        # lead_id, ts, event_type, model, value, ingested_at
        ["L1", "2025-01-05T00:00:00Z", "page_view", "X5", None, "2025-01-05T00:01:00Z"],
        ["L1", None, "page_view", None, None, None],  # missing ts
        ["L1", "yesterday", "page_view", None, None, None],  # unparseable ts
        ["L999", "2025-01-05T00:00:00Z", "page_view", None, None, None],  # unknown lead
        ["L1", "2025-01-05T00:02:00Z", "config_view", None, None, "2025-01-05T00:01:00Z"],
        ["L1", "2025-07-05T00:00:00Z", "page_view", None, None, None],  # after the clock
        ["L1", "2025-05-05T00:00:00Z", "page_view", None, None, "2025-06-02T00:00:00Z"],
        ["L3", "2025-01-05T00:00:00Z", "page_view", None, None, None],  # its lead is bad
        ["L1", "2025-01-05T00:00:00Z", "page_view", "X5", None, "2025-01-05T00:01:00Z"],  # dup
        ["L1", "2025-01-06T00:00:00Z", None, None, None, None],  # missing type
        ["L1", "2025-01-05T08:00:00+08:00", "finance_calc", None, "250000", None],  # ok, +08
        ["L6", "2025-02-03T00:00:00Z", "brochure_download", None, None, None],  # ok, other
        ["L1", "2025-01-07T00:00:00Z", "page_view", None, None, "soon"],  # unparseable
        ["L1", "2025-01-07T00:00:00Z", "page_view", None, "n/a", None],  # unparseable value
        ["L1", "2025-06-01T00:00:00Z", "page_view", None, None, "2025-06-01T00:00:00Z"],  # ok
    ],
    columns=["lead_id", "ts", "event_type", "model", "value", "ingested_at"],
)
EVENT_REASONS = {1: "missing_ts", 2: "unparseable_ts", 3: "unknown_lead",
                 4: "ts_after_ingested_at", 5: "ts_after_clock", 6: "ingested_at_after_clock",
                 7: "unknown_lead", 9: "missing_event_type", 12: "unparseable_ingested_at",
                 13: "unparseable_value"}

CONTACTS = pd.DataFrame(
    [
        ["L1", "2025-01-06T00:00:00Z", "phone", "connected"],
        ["L1", "2025-01-06T01:00:00Z", "fax", "connected"],  # unknown channel
        ["L1", "2025-01-06T02:00:00Z", "phone", "maybe"],  # unknown outcome
        ["L404", "2025-01-06T03:00:00Z", "sms", "replied"],  # unknown lead
        ["L1", "2025-01-06T04:00:00Z", "WeChat", "Replied"],  # ok, case is normalised
        ["L1", "2025-01-06T05:00:00Z", None, "replied"],  # missing channel
        ["L1", "2025-06-02T00:00:00Z", "sms", "ignored"],  # after the clock
        ["L1", "2025-01-06T00:00:00Z", "phone", "connected"],  # exact duplicate of row 0
    ],
    columns=["lead_id", "ts", "channel", "outcome"],
)
CONTACT_REASONS = {1: "unknown_channel", 2: "unknown_outcome", 3: "unknown_lead",
                   5: "missing_channel", 6: "ts_after_clock"}


def _counts(reasons: dict[int, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in reasons.values():
        out[r] = out.get(r, 0) + 1
    return out


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_bad_rows_are_quarantined_with_reason_and_row(tmp_path, fmt):
    data = tmp_path / "data"
    paths = {t: write(data, t, df, fmt)
             for t, df in (("leads", LEADS), ("events", EVENTS), ("contacts", CONTACTS))}
    ds = load(data, tmp_path)
    expected = {"leads": (LEADS, LEAD_REASONS, 1), "events": (EVENTS, EVENT_REASONS, 1),
                "contacts": (CONTACTS, CONTACT_REASONS, 1)}
    for table, (df, reasons, dups) in expected.items():
        rep = ds.reports[table]
        assert rep.file == str(paths[table])
        assert rep.rows_read == len(df)
        assert rep.duplicates == dups
        assert rep.quarantined == _counts(reasons), table
        assert rep.rows_ok == len(df) - len(reasons) - dups
        assert rep.rows_ok + rep.n_quarantined + rep.duplicates == rep.rows_read
        # examples name the source row and the offending value
        for reason, examples in rep.examples.items():
            assert examples
            for e in examples:
                assert reasons[e["row"]] == reason
        # the quarantine file holds exactly the bad rows, with reason, file and row number
        q = pd.read_parquet(tmp_path / "quarantine" / f"{table}.parquet")
        assert dict(zip(q["_row"], q["_reason"], strict=True)) == reasons
        assert set(q["_file"]) == {str(paths[table])}
        # with their original values, unparsed
        for _, r in q.iterrows():
            got, src = r["lead_id"], df.iloc[int(r["_row"])]["lead_id"]
            assert ("" if pd.isna(got) else got).strip() == ("" if pd.isna(src) else src).strip()
        if table == "events":
            bad_ts = q.loc[q["_reason"] == "unparseable_ts", "ts"].tolist()
            assert bad_ts == ["yesterday"]
        assert len(ds.frame(table)) == rep.rows_ok
    summary = ds.summary()
    assert "unknown_tz: 1 (e.g. row 4 tz='Mars/Olympus')" in summary
    assert "events: 15 rows read" in summary and "1 exact duplicates dropped" in summary

    leads = ds.frame("leads").set_index("lead_id")
    assert sorted(leads.index) == ["L1", "L6", "L8"]
    assert leads.loc["L1", "dealer_id"] == "D1"  # the first of the conflicting rows is kept
    assert leads.loc["L6", "tz"] == "Asia/Shanghai"  # missing zone: the default
    assert leads.loc["L8", "budget"] == 150000.0
    assert leads.loc["L6", "created_at"] == pd.Timestamp("2025-02-01T00:00:00Z")
    events = ds.frame("events")
    assert sorted(events["event_type"]) == ["brochure_download", "finance_calc", "page_view",
                                            "page_view"]
    fc = events[events["event_type"] == "finance_calc"].iloc[0]
    assert fc["ts"] == pd.Timestamp("2025-01-05T00:00:00Z") and fc["value"] == 250000.0
    contacts = ds.frame("contacts")
    assert sorted(contacts["channel"]) == ["phone", "wechat"]
    assert sorted(contacts["outcome"]) == ["connected", "replied"]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_sink_gets_the_same_rows_report_and_quarantine_as_tables(tmp_path, fmt):
    """The nightly job's path (clean rows streamed to bucketed Parquet) agrees with the tables
    path on every count, example, quarantined row and clean row."""
    from leadscore.nightly.intake import BucketSink
    from leadscore.nightly.per_bucket import bucket_connection

    data = tmp_path / "data"
    for t, df in (("leads", LEADS), ("events", EVENTS), ("contacts", CONTACTS)):
        write(data, t, df, fmt)
    tables = load(data, tmp_path / "t")
    q_tables = {t: pd.read_parquet(tmp_path / "t" / "quarantine" / f"{t}.parquet")
                for t in ("events", "contacts")}
    (tmp_path / "work").mkdir()
    sink = BucketSink(tmp_path / "work", "0", n_buckets=3)
    sunk = load(data, tmp_path / "s", sink=sink)
    for table in ("leads", "events", "contacts"):
        a, b = tables.reports[table], sunk.reports[table]
        assert (a.rows_read, a.duplicates, a.rows_ok, a.quarantined, a.examples) == \
            (b.rows_read, b.duplicates, b.rows_ok, b.quarantined, b.examples), table
    for table, want in q_tables.items():
        got = pd.read_parquet(tmp_path / "s" / "quarantine" / f"{table}.parquet")
        pd.testing.assert_frame_equal(got, want, check_dtype=False)
    for table in ("leads", "events", "contacts"):
        parts = []
        for b in range(3):
            con = bucket_connection(tmp_path / "work", b)
            parts.append(con.sql(f"SELECT * FROM {table}").df())
            con.close()
        got = pd.concat(parts)
        want = tables.con.sql(f"SELECT * FROM {table}").df()

        def rows(df: pd.DataFrame) -> list[tuple]:
            return sorted(tuple(None if pd.isna(v) else v for v in r)
                          for r in df.itertuples(index=False))

        assert rows(got) == rows(want), table


def test_clean_data_leaves_no_quarantine_file(tmp_path):
    data = tmp_path / "data"
    write(data, "leads", LEADS.iloc[[0, 8]])
    write(data, "events", EVENTS.iloc[[0, 10]])
    qdir = tmp_path / "quarantine"
    qdir.mkdir()
    (qdir / "events.parquet").write_bytes(b"stale file of an earlier run")
    ds = load(data, tmp_path)
    assert all(r.n_quarantined == 0 for r in ds.reports.values())
    assert not (qdir / "events.parquet").exists()
    assert len(ds.frame("events")) == 2


# --------------------------------------------------------------------------- whole files


def test_missing_column_names_file_and_column(tmp_path):
    data = tmp_path / "data"
    write(data, "leads", LEADS.iloc[[0]])
    path = write(data, "events", EVENTS.drop(columns=["event_type"]).iloc[[0]], "parquet")
    with pytest.raises(ContractError) as err:
        load(data, tmp_path)
    assert str(path) in str(err.value) and "'event_type'" in str(err.value)

    data2 = tmp_path / "data2"
    path = write(data2, "leads", LEADS.drop(columns=["dealer_id"]))
    with pytest.raises(ContractError) as err:
        load(data2, tmp_path)
    assert str(path) in str(err.value) and "'dealer_id'" in str(err.value)


def test_optional_columns_may_be_absent_or_all_null(tmp_path):
    data = tmp_path / "data"
    leads = LEADS.iloc[[0, 8]].drop(columns=["city", "budget"]).copy()
    leads["intended_model"] = None  # an all-null column: Parquet type "null"
    leads["tz"] = None
    write(data, "leads", leads, "parquet")
    write(data, "events", EVENTS.iloc[[0]].drop(columns=["model", "value", "ingested_at"]),
          "parquet")
    ds = load(data, tmp_path)
    got = ds.frame("leads")
    assert got["city"].isna().all() and got["budget"].isna().all()
    assert set(got["tz"]) == {"Asia/Shanghai"}
    assert ds.frame("events")["ingested_at"].isna().all()


def test_wrong_type_names_the_column(tmp_path):
    data = tmp_path / "data"
    write(data, "leads", LEADS.iloc[[0]], "parquet")
    bad = pd.DataFrame({"lead_id": ["L1", "L1"], "ts": [True, False],
                        "event_type": ["page_view", "page_view"]})
    path = write(data, "events", bad, "parquet")
    with pytest.raises(ContractError) as err:
        load(data, tmp_path)
    assert str(path) in str(err.value) and "'ts'" in str(err.value)


def test_mostly_unparseable_csv_column_is_a_wrong_file(tmp_path):
    data = tmp_path / "data"
    write(data, "leads", LEADS.iloc[[0]])
    n = 40
    ts = ["2025-01-05T00:00:00Z"] * 10 + [f"row {i}" for i in range(n - 10)]
    path = write(data, "events", pd.DataFrame({"lead_id": ["L1"] * n, "ts": ts,
                                               "event_type": ["page_view"] * n}))
    with pytest.raises(ContractError) as err:
        load(data, tmp_path)
    msg = str(err.value)
    assert str(path) in msg and "'ts'" in msg and "30 of 40" in msg


def test_a_few_unparseable_values_are_rows_not_a_wrong_file(tmp_path):
    data = tmp_path / "data"
    write(data, "leads", LEADS.iloc[[0]])
    n = 40
    ts = [f"2025-01-{1 + i % 28:02d}T00:00:00Z" for i in range(n - 3)] + ["x", "y", "z"]
    write(data, "events", pd.DataFrame({"lead_id": ["L1"] * n, "ts": ts,
                                        "event_type": [f"t{i}" for i in range(n)]}))
    ds = load(data, tmp_path)
    assert ds.reports["events"].quarantined == {"unparseable_ts": 3}
    assert ds.reports["events"].rows_ok == n - 3


def test_leads_file_is_required(tmp_path):
    data = tmp_path / "data"
    write(data, "events", EVENTS.iloc[[0]])
    with pytest.raises(ContractError, match="leads"):
        load(data, tmp_path)
    with pytest.raises(ContractError, match="not a folder"):
        load(tmp_path / "nowhere", tmp_path)


# --------------------------------------------------------------------------- formats


def _typed_frames():
    rng = np.random.default_rng(0)
    n_leads, n_events = 30, 400
    base = pd.Timestamp("2025-01-01", tz="UTC")
    leads = pd.DataFrame({
        "lead_id": [f"L{i}" for i in range(n_leads)],
        "dealer_id": rng.choice(["D1", "D2"], n_leads),
        "created_at": base + pd.to_timedelta(rng.integers(0, 10**6, n_leads), unit="s"),
        "source": rng.choice(["website", "douyin"], n_leads),
        "intended_model": rng.choice(np.array(["X5", None], dtype=object), n_leads),
        "city": "Beijing",
        "budget": rng.choice([np.nan, 123456.5], n_leads),
        "tz": rng.choice(np.array(["Asia/Shanghai", "Europe/Berlin", None], dtype=object),
                         n_leads),
    })
    ts = base + pd.to_timedelta(rng.integers(0, 10**13, n_events), unit="us")
    late = pd.to_timedelta(rng.integers(0, 10**11, n_events), unit="us")
    events = pd.DataFrame({
        "lead_id": rng.choice(leads["lead_id"], n_events),
        "ts": ts,
        "event_type": rng.choice(["page_view", "config_view", "order"], n_events),
        "model": rng.choice(np.array(["X5", "X3", None], dtype=object), n_events),
        "value": rng.choice([np.nan, 1.25, 99.0], n_events),
        "ingested_at": pd.Series(ts + late).where(rng.random(n_events) < 0.7),
    })
    contacts = pd.DataFrame({
        "lead_id": rng.choice(leads["lead_id"], 50),
        "ts": base + pd.to_timedelta(rng.integers(0, 10**13, 50), unit="us"),
        "channel": rng.choice(["phone", "sms"], 50),
        "outcome": rng.choice(["connected", "ignored"], 50),
    })
    return leads, events, contacts


def _as_csv_text(df: pd.DataFrame, offset_hours: int) -> pd.DataFrame:
    """Timestamps as ISO text in another zone's offset (same instants)."""
    out = df.copy()
    for c in out.columns:
        if isinstance(out[c].dtype, pd.DatetimeTZDtype):
            local = out[c].dt.tz_convert(f"Etc/GMT-{offset_hours}")  # i.e. UTC+offset
            out[c] = local.map(lambda t: t.isoformat() if not pd.isna(t) else None)
    return out


def test_csv_and_parquet_give_the_same_clean_tables(tmp_path):
    leads, events, contacts = _typed_frames()
    pq_dir, csv_dir = tmp_path / "pq", tmp_path / "csv"
    for t, df in (("leads", leads), ("events", events), ("contacts", contacts)):
        write(pq_dir, t, df, "parquet")
        write(csv_dir, t, _as_csv_text(df, 8), "csv")  # +08:00 offsets in the text
    a, b = load(pq_dir, tmp_path), load(csv_dir, tmp_path)
    for t in ("leads", "events", "contacts"):
        fa, fb = frame(a, t), frame(b, t)
        assert len(fa) == a.reports[t].rows_read > 0
        pd.testing.assert_frame_equal(fa, fb, check_dtype=False)
    # the timestamps are the original instants, in UTC
    got = frame(a, "events")["ts"].sort_values().reset_index(drop=True)
    want = events["ts"].sort_values().reset_index(drop=True)
    assert (got == want).all() and str(got.dtype).endswith("UTC]")


def test_naive_timestamps_are_utc(tmp_path):
    leads, events, _ = _typed_frames()
    naive = events.copy()
    for c in ("ts", "ingested_at"):
        naive[c] = naive[c].dt.tz_localize(None)
    write(tmp_path / "a", "leads", leads, "parquet")
    write(tmp_path / "a", "events", naive, "parquet")
    write(tmp_path / "b", "leads", leads, "parquet")
    write(tmp_path / "b", "events", events, "parquet")
    pd.testing.assert_frame_equal(frame(load(tmp_path / "a", tmp_path), "events"),
                                  frame(load(tmp_path / "b", tmp_path), "events"))


def test_absent_contacts_file_gives_an_empty_table(tmp_path):
    data = tmp_path / "data"
    write(data, "leads", LEADS.iloc[[0]])
    write(data, "events", EVENTS.iloc[[0]])
    ds = load(data, tmp_path)
    c = ds.frame("contacts")
    assert len(c) == 0 and list(c.columns) == ["lead_id", "ts", "channel", "outcome"]
    assert ds.reports["contacts"].file is None and "(absent)" in ds.summary()


def test_folder_of_parquet_files_reports_file_and_row(tmp_path):
    data = tmp_path / "data"
    write(data, "leads", LEADS.iloc[[0]], "parquet")
    part1 = write(data / "events", "part-1", EVENTS.iloc[[0, 3]], "parquet")
    part2 = write(data / "events", "part-2", EVENTS.iloc[[10, 5]], "parquet")
    ds = load(data, tmp_path)
    rep = ds.reports["events"]
    assert rep.rows_read == 4 and rep.rows_ok == 2
    q = pd.read_parquet(tmp_path / "quarantine" / "events.parquet")
    got = sorted(zip(q["_file"], q["_row"], q["_reason"], strict=True))
    assert got == [(str(part1), 1, "unknown_lead"), (str(part2), 1, "ts_after_clock")]


# --------------------------------------------------------------------------- unreadable files

def _validate_cli(data):
    from typer.testing import CliRunner

    from leadscore.cli import app

    return CliRunner().invoke(app, ["validate", "--data", str(data)])


def test_a_truncated_parquet_file_is_one_line_and_exit_2(tmp_path):
    data = tmp_path / "data"
    path = write(data, "leads", LEADS.iloc[[0, 8, 10]], "parquet")
    write(data, "events", EVENTS.iloc[[0]])
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    res = _validate_cli(data)
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.output
    assert str(path) in lines[0] and "Parquet" in lines[0]


def test_a_truncated_file_in_a_parquet_folder_is_named(tmp_path):
    data = tmp_path / "data"
    write(data, "leads", LEADS.iloc[[0]], "parquet")
    write(data / "events", "part-1", EVENTS.iloc[[0]], "parquet")
    bad = write(data / "events", "part-2", EVENTS.iloc[[10]], "parquet")
    bad.write_bytes(bad.read_bytes()[:-12])
    with pytest.raises(contract.UnreadableFile) as e:
        load(data, tmp_path)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)


def test_a_gbk_csv_with_chinese_city_names_is_read_as_it_is(tmp_path):
    """Chinese CRMs export GBK by default: read as GB18030 (its superset), the report says so."""
    data = tmp_path / "data"
    data.mkdir()
    leads = LEADS.iloc[[0, 8, 10]].copy()
    leads["city"] = ["北京", "上海市浦东新区", "廣州"]  # 廣: a traditional character, in GBK
    leads["source"] = ["网站", "展厅", "转介绍"]
    (data / "leads.csv").write_bytes(leads.to_csv(index=False).encode("gbk"))
    write(data, "events", EVENTS.iloc[[0]])
    ds = load(data, tmp_path)
    got = ds.frame("leads").set_index("lead_id").loc[leads["lead_id"]]
    assert got["city"].tolist() == leads["city"].tolist()
    assert got["source"].tolist() == leads["source"].tolist()
    assert ds.reports["leads"].encoding == "gb18030" and "GB18030" in ds.summary()
    assert ds.reports["events"].encoding == "utf-8"
    res = _validate_cli(data)
    assert res.exit_code == 0 and "3 ok" in res.output


def test_a_csv_in_another_encoding_is_one_line_naming_it_and_how_to_convert(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write(data, "leads", LEADS.iloc[[0]])
    body = EVENTS.iloc[[0]].to_csv(index=False).encode() + b"L1,2025-01-06T00:00:00Z,\xff\xfe\n"
    (data / "events.csv").write_bytes(body)
    res = _validate_cli(data)
    assert res.exit_code == 2
    (line,) = res.output.strip().splitlines()
    assert str(data / "events.csv") in line and "not UTF-8" in line and "on line 3" in line
    assert "iconv" in line and "Traceback" not in res.output


# --------------------------------------------------------------------------- inline rows

def test_inline_frames_are_checked_by_the_rules_load_quarantines_by(tmp_path):
    """``register_frames(clock=...)`` (inline HTTP rows) leaves out each row for the reason
    ``load`` quarantines it for; exact duplicates and repeated lead ids aside, which a request
    cannot hold."""
    con = contract.connect()
    bad = contract.register_frames(con, LEADS.drop(index=[5, 7]), EVENTS.drop(index=[8]),
                                   CONTACTS.drop(index=[7]), clock=CLOCK)
    got = {t: dict(zip(g["row"], g["reason"], strict=True)) for t, g in bad.groupby("table")}

    def after(reasons, dropped):  # row numbers once the dropped rows are gone
        keep = [r for r in range(100) if r not in dropped]
        return {keep.index(r): v for r, v in reasons.items() if r not in dropped}

    assert got["leads"] == after(LEAD_REASONS, {5, 7})
    assert got["events"] == after(EVENT_REASONS, {8})
    assert got["contacts"] == after(CONTACT_REASONS, {7})
    write(tmp_path / "d", "leads", LEADS)
    ds = load(write(tmp_path / "d", "events", EVENTS).parent, tmp_path)  # the same clean leads
    pd.testing.assert_frame_equal(
        con.table("leads").df().sort_values("lead_id").reset_index(drop=True),
        ds.frame("leads").sort_values("lead_id").reset_index(drop=True))
