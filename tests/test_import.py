"""``leadscore import``: exports and a mapping in, the data contract's folder out."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from leadscore import contract, importer
from leadscore.cli import app

ROOT = Path(__file__).resolve().parents[1]
#: CI clones the repo beside ``shared/``; a worktree elsewhere may point at the data
REALDATA = Path(os.environ.get("LEADSCORE_REALDATA") or ROOT.parent / "shared" / "realdata")
CLOCK = pd.Timestamp("2030-01-01", tz="UTC")


def cli(*args: str):
    return CliRunner().invoke(app, ["import", *args])


def loaded(out: Path) -> contract.Dataset:
    """The imported folder through the contract, which must keep every row."""
    ds = contract.load(out, clock=CLOCK, quarantine_dir=out / "quarantine")
    for rep in ds.reports.values():
        assert rep.n_quarantined == 0 and rep.duplicates == 0, rep.lines()
    return ds


# --------------------------------------------------------------------------- a transaction log

INVOICES = pd.DataFrame(
    [
        # InvoiceNo, StockCode, Quantity, InvoiceDate, UnitPrice, CustomerID, Country
        ["1001", "A", "2", "2011-01-03 09:00", "1.50", "17850", "United Kingdom"],
        ["1001", "B", "1", "2011-01-03 09:00", "10.00", "17850", "United Kingdom"],
        ["1001", "C", "4", "2011-01-03 09:00", "0.25", "17850", "United Kingdom"],
        ["1002", "A", "1", "2011-07-04 10:30", "1.50", "17850", "France"],  # summer time
        ["1003", "B", "3", "2011-02-01 12:00", "10.00", "", "Germany"],  # nobody's
        ["1004", "B", "5", "2011-02-02 12:00", "10.00", "12583", "France"],
        ["C1005", "B", "-2", "2011-02-09 08:00", "10.00", "12583", "France"],  # cancellation
        ["C1006", "A", "-1", "2011-03-01 08:00", "1.50", "13047", "Norway"],  # only cancelled
    ],
    columns=["InvoiceNo", "StockCode", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID",
             "Country"],
)

RETAIL_MAPPING = """
timezone: Europe/London
sources:
  invoices:
    path: invoices.csv.gz
    types: {Quantity: double, UnitPrice: double}
    filters:
      - {name: no_customer, drop: "CustomerID IS NULL OR trim(CustomerID) = ''"}
leads:
  from: invoices
  lead_id: CustomerID
  dealer_id: {value: shop}
  created_at: {first_event: true}
  extra: {country: Country}
events:
  - name: purchases
    from: invoices
    filters: [{name: cancellation, drop: "InvoiceNo LIKE 'C%'"}]
    lead_id: CustomerID
    ts: InvoiceDate
    event_type: {value: order}
    value: {sql: Quantity * UnitPrice}
    aggregate: sum
  - name: cancellations
    from: invoices
    filters: [{name: not_cancelled, keep: "InvoiceNo LIKE 'C%'"}]
    lead_id: CustomerID
    ts: InvoiceDate
    event_type: {value: return}
    value: {sql: -Quantity * UnitPrice}
    aggregate: sum
"""


def _retail(tmp_path: Path, encoding: str = "utf-8", lines: pd.DataFrame = INVOICES) -> Path:
    with gzip.open(tmp_path / "invoices.csv.gz", "wt", encoding=encoding, newline="") as fh:
        lines.to_csv(fh, index=False)
    (tmp_path / "mapping.yaml").write_text(RETAIL_MAPPING)
    return tmp_path / "mapping.yaml"


def test_a_transaction_log_becomes_customers_and_their_orders(tmp_path):
    rep = importer.run(_retail(tmp_path), tmp_path / "out")
    ds = loaded(tmp_path / "out")
    leads = ds.frame("leads").set_index("lead_id").sort_index()
    events = ds.frame("events").sort_values(["lead_id", "ts"]).reset_index(drop=True)
    london = "Europe/London"
    # one order per invoice, its lines summed; naive times are London's (BST in July)
    assert events[["lead_id", "event_type", "value"]].values.tolist() == [
        ["12583", "order", 50.0], ["12583", "return", 20.0],
        ["13047", "return", 1.5],
        ["17850", "order", 14.0], ["17850", "order", 1.5]]
    assert events["ts"].tolist() == [
        pd.Timestamp(t, tz=london).tz_convert("UTC") for t in
        ["2011-02-02 12:00", "2011-02-09 08:00", "2011-03-01 08:00", "2011-01-03 09:00",
         "2011-07-04 10:30"]]
    assert events.loc[4, "ts"].hour == 9  # 10:30 BST is 09:30 UTC
    # customers: created at their first invoice, the first row's country, the mapping's zone
    assert leads.index.tolist() == ["12583", "13047", "17850"]
    assert leads["created_at"].tolist() == [events["ts"][0], events["ts"][2], events["ts"][3]]
    assert set(leads["tz"]) == {london} and set(leads["dealer_id"]) == {"shop"}
    raw = pd.read_parquet(tmp_path / "out" / "leads.parquet").set_index("lead_id")
    assert raw.loc["17850", "country"] == "United Kingdom"
    # the report: every dropped or folded row counted where it went
    parts = {p.name: p for p in rep.parts}
    assert parts["source invoices (" + str(tmp_path / "invoices.csv.gz") + ")"].dropped == {
        "filter no_customer": 1}
    assert parts["events[purchases]"].dropped == {"filter cancellation": 2}
    assert parts["events[purchases]"].merged == 2 and parts["events[purchases]"].rows_out == 3
    assert parts["events[cancellations]"].dropped == {"filter not_cancelled": 5}
    assert parts["leads"].rows_out == 3 and parts["leads"].merged == 4
    assert rep.rows == {"leads": 3, "events": 5}


def test_a_gb18030_export_is_read_through_the_contracts_encoding_check(tmp_path):
    lines = INVOICES.assign(Country=INVOICES["Country"].replace("France", "法国"))
    rep = importer.run(_retail(tmp_path, "gb18030", lines), tmp_path / "out")
    raw = pd.read_parquet(tmp_path / "out" / "leads.parquet").set_index("lead_id")
    assert raw.loc["12583", "country"] == "法国"
    assert any("GB18030" in n for p in rep.parts for n in p.notes)


def test_a_number_that_does_not_parse_is_left_out_and_counted(tmp_path):
    lines = INVOICES.copy()
    lines.loc[1, "Quantity"] = "lots"
    rep = importer.run(_retail(tmp_path, lines=lines), tmp_path / "out")
    events = loaded(tmp_path / "out").frame("events").sort_values(["lead_id", "ts"])
    assert events["value"].tolist() == [50.0, 20.0, 1.5, 4.0, 1.5]  # 3.00 + 1.00, not 14
    assert "Quantity: values not a double, left empty: 1" in rep.parts[0].notes


# --------------------------------------------------------------------------- a CRM export

CRM_LEADS = pd.DataFrame({
    "Id": ["L1", "L2", "L3", "L4"],
    "Branch": ["B1", "B1", "B2", "B2"],
    "Created": ["03-03-2024 09:15", "04-03-2024 18:00", "10-03-2024 08:00", "11-03-2024 12:00"],
    "Channel": ["web", "phone", "web", None],
    "Budget": ["30000", "n/a", "45000", None],
    "Status": ["won", "lost", "open", "won"],
    "Closed": ["20-03-2024 10:00", "25-03-2024 16:00", None, "28-03-2024 11:00"],
    "Segment": ["SUV", "Sedan", "SUV", "SUV"],
})
CRM_EVENTS = pd.DataFrame({
    "Lead": ["L1", "L1", "L1", "L2", "L3", "L3", "L9", "L2"],
    "When": ["05-03-2024 21:10", "06-03-2024 10:00", "07-03-2024 11:00", "05-03-2024 09:00",
             "12-03-2024 13:00", "13-03-2024 13:00", "13-03-2024 13:00", "soon"],
    "Activity": ["Web visit", "Finance calculator", "Trade-in valuation", "Web visit",
                 "Test drive", "Spam", "Web visit", "Web visit"],
})

CRM_MAPPING = """
timezone: Europe/Berlin
timestamp_format: "%d-%m-%Y %H:%M"
sources:
  leads: {path: leads.parquet}
  activities: {path: activities.csv}
leads:
  from: leads
  lead_id: Id
  dealer_id: Branch
  created_at: Created
  source: Channel
  budget: Budget
  extra: [Segment]
events:
  - name: activities
    from: activities
    lead_id: Lead
    ts: When
    event_type:
      column: Activity
      map: {Web visit: page_view, Finance calculator: finance_calc, Test drive: test_drive_done,
            Spam: null}
      keep_unmapped: true
  - name: outcomes
    from: leads
    lead_id: Id
    ts: Closed
    event_type: {column: Status, map: {won: order, lost: lost}}
"""


def _crm(tmp_path: Path, mapping: str = CRM_MAPPING) -> Path:
    CRM_LEADS.to_parquet(tmp_path / "leads.parquet", index=False)
    CRM_EVENTS.to_csv(tmp_path / "activities.csv", index=False)
    (tmp_path / "mapping.yaml").write_text(mapping)
    return tmp_path / "mapping.yaml"


def test_a_crm_export_maps_types_outcomes_and_local_times(tmp_path):
    rep = importer.run(_crm(tmp_path), tmp_path / "out")
    ds = loaded(tmp_path / "out")
    events = ds.frame("events").sort_values(["lead_id", "ts"]).reset_index(drop=True)
    assert events[["lead_id", "event_type"]].values.tolist() == [
        ["L1", "page_view"], ["L1", "finance_calc"],
        ["L1", "Trade-in valuation"],  # not in the map: kept under its own name
        ["L1", "order"], ["L2", "page_view"], ["L2", "lost"], ["L3", "test_drive_done"],
        ["L4", "order"]]
    # DD-MM-YYYY HH:MM in Berlin: 21:10 CET is 20:10 UTC
    assert events.loc[0, "ts"] == pd.Timestamp("2024-03-05 20:10", tz="UTC")
    leads = ds.frame("leads").set_index("lead_id").sort_index()
    assert leads["created_at"]["L1"] == pd.Timestamp("2024-03-03 08:15", tz="UTC")
    assert leads["tz"].tolist() == ["Europe/Berlin"] * 4  # the mapping's zone by default
    assert leads["budget"].tolist()[0] == 30000.0 and leads["budget"].isna().tolist() == [
        False, True, False, True]
    assert leads["source"].tolist()[:3] == ["web", "phone", "web"]
    parts = {p.name: p for p in rep.parts}
    # a time that does not parse, Spam mapped to nothing, L9 unknown, L3 still open: dropped
    # and counted
    assert parts["events[activities]"].dropped == {"ts unreadable": 1,
                                                   "event_type not in map": 1,
                                                   "lead not in leads": 1}
    assert parts["events[outcomes]"].dropped == {"missing ts": 1}
    assert any(n.startswith("budget: values unreadable, left empty: 1")
               for n in parts["leads"].notes)


def test_unmapped_types_are_dropped_and_counted_unless_kept(tmp_path):
    mapping = CRM_MAPPING.replace("      keep_unmapped: true\n", "")
    rep = importer.run(_crm(tmp_path, mapping), tmp_path / "out")
    events = loaded(tmp_path / "out").frame("events")
    assert "Trade-in valuation" not in set(events["event_type"])
    part = next(p for p in rep.parts if p.name == "events[activities]")
    assert part.dropped["event_type not in map"] == 2  # Spam and the trade-in valuation


def test_source_overrides_by_name_and_by_file_name(tmp_path):
    mapping = _crm(tmp_path)
    other = tmp_path / "elsewhere"
    other.mkdir()
    CRM_EVENTS.iloc[:2].to_csv(other / "activities.csv", index=False)
    CRM_LEADS.to_parquet(other / "crm.parquet", index=False)
    res = cli("--mapping", str(mapping), "--out", str(tmp_path / "a"),
              "--source", str(other / "activities.csv"), "--source",
              f"leads={other / 'crm.parquet'}", "--no-check")
    assert res.exit_code == 0, res.output
    assert str(other / "activities.csv") in res.output
    assert len(pd.read_parquet(tmp_path / "a" / "events.parquet")) == 2 + 3
    res = cli("--mapping", str(mapping), "--out", str(tmp_path / "b"),
              "--source", str(other / "crm.parquet"))
    assert res.exit_code == 2 and "NAME=PATH" in res.output


# --------------------------------------------------------------------------- bad input

def _bad(tmp_path, mapping: str) -> tuple[int, str]:
    _crm(tmp_path, mapping)
    res = cli("--mapping", str(tmp_path / "mapping.yaml"), "--out", str(tmp_path / "out"))
    assert not (tmp_path / "out" / "leads.parquet").exists()
    return res.exit_code, " ".join(res.output.split())


def test_unknown_mapping_keys_exit_2_naming_them(tmp_path):
    code, out = _bad(tmp_path, CRM_MAPPING.replace("  budget: Budget", "  budgte: Budget")
                     .replace("keep_unmapped: true", "keep_unmaped: true"))
    assert code == 2
    assert "leads.budgte: Extra inputs are not permitted" in out
    assert "events.0.event_type.keep_unmaped: Extra inputs are not permitted" in out


def test_a_missing_column_exits_2_naming_file_and_column(tmp_path):
    code, out = _bad(tmp_path, CRM_MAPPING.replace("column: Activity", "column: Activty"))
    assert code == 2
    assert f"{tmp_path / 'activities.csv'}: events.0.event_type: no column 'Activty'" in out
    code, out = _bad(tmp_path, CRM_MAPPING.replace("  budget: Budget",
                                                   "  budget: {sql: Budget * Rate}"))
    assert code == 2 and "leads.budget: no column 'Rate'" in out


def test_a_wrong_timestamp_format_exits_2_naming_the_column(tmp_path):
    code, out = _bad(tmp_path, CRM_MAPPING.replace("%d-%m-%Y %H:%M", "%Y-%m-%d %H:%M"))
    assert code == 2
    assert (f"{tmp_path / 'activities.csv'}: events.0.ts: 8 of 8 values are not a time in the "
            "format '%Y-%m-%d %H:%M' (e.g. '05-03-2024 21:10')") in out


def test_a_missing_source_file_exits_2_naming_it(tmp_path):
    code, out = _bad(tmp_path, CRM_MAPPING.replace("activities.csv", "activitys.csv"))
    assert code == 2 and f"sources.activities: {tmp_path / 'activitys.csv'}: no such file" in out


@pytest.mark.parametrize("expr,what", [
    ("(SELECT 1)", "subquery is not allowed"),
    ("read_text('/etc/passwd')", "function read_text is not allowed"),
    ("1; DROP TABLE x", "not an SQL expression"),
    ("Budget AS b", "not one expression"),
    ("getenv('HOME')", "function getenv is not allowed"),
])
def test_expressions_are_checked_before_anything_runs(tmp_path, expr, what):
    code, out = _bad(tmp_path, CRM_MAPPING.replace("  budget: Budget",
                                                   f'  budget: {{sql: "{expr}"}}'))
    assert code == 2 and "leads.budget" in out and what in out


def test_an_existing_output_is_not_replaced_without_force(tmp_path):
    mapping = _crm(tmp_path)
    assert cli("--mapping", str(mapping), "--out", str(tmp_path / "o")).exit_code == 0
    res = cli("--mapping", str(mapping), "--out", str(tmp_path / "o"))
    assert res.exit_code == 2 and "--force" in res.output
    res = cli("--mapping", str(mapping), "--out", str(tmp_path / "o"), "--force")
    assert res.exit_code == 0, res.output


# --------------------------------------------------------------------------- the shipped mappings

def test_the_shipped_mappings_import_the_real_data_sets(tmp_path):
    """The examples/ mappings on ../shared/realdata (always there in CI: no skip)."""
    assert REALDATA.is_dir(), f"{REALDATA}: the real data sets are missing"
    retail = importer.run(ROOT / "examples/onlineretail/mapping.yaml", tmp_path / "retail",
                          data_dir=REALDATA)
    ds = loaded(tmp_path / "retail")
    assert retail.rows["leads"] == 4372  # every customer with a CustomerID
    events = ds.frame("events")
    counts = events["event_type"].value_counts().to_dict()
    assert counts["order"] == 18444  # invoices, one per customer and invoice time
    assert set(counts) == {"order", "return"}
    assert events.loc[events["event_type"] == "order", "value"].ge(0).all()
    olist = importer.run(ROOT / "examples/olist/mapping.yaml", tmp_path / "olist",
                         data_dir=REALDATA)
    ds = loaded(tmp_path / "olist")
    assert olist.rows == {"leads": 8000, "events": 8842}
    assert (ds.frame("events")["event_type"] == "order").sum() == 842
    leads = pd.read_parquet(tmp_path / "olist" / "leads.parquet")
    assert "business_segment" not in leads.columns  # deal columns leak the label


def test_contacts_from_several_parquet_files_with_naive_times(tmp_path):
    """A glob of Parquet exports with typed (naive) times, read in the source's zone; channel
    and outcome through maps."""
    mapping = _crm(tmp_path, CRM_MAPPING.replace("sources:\n", """sources:
  calls: {path: calls/*.parquet, timezone: Asia/Shanghai}
""") + """
contacts:
  - from: calls
    lead_id: Lead
    ts: At
    channel: {column: Kind, map: {Call: phone, WeChat: wechat}}
    outcome: {column: Result, map: {ok: connected, none: no_answer}}
""")
    (tmp_path / "calls").mkdir()
    at = pd.to_datetime(["2024-03-05 09:00", "2024-03-06 20:30", "2024-03-07 10:00"])
    calls = pd.DataFrame({"Lead": ["L1", "L2", "L2"], "At": at,
                          "Kind": ["Call", "WeChat", "Fax"], "Result": ["ok", "none", "ok"]})
    calls.iloc[:2].to_parquet(tmp_path / "calls" / "a.parquet", index=False)
    calls.iloc[2:].to_parquet(tmp_path / "calls" / "b.parquet", index=False)
    rep = importer.run(mapping, tmp_path / "out")
    contacts = loaded(tmp_path / "out").frame("contacts").sort_values("ts")
    assert contacts[["lead_id", "channel", "outcome"]].values.tolist() == [
        ["L1", "phone", "connected"], ["L2", "wechat", "no_answer"]]
    assert contacts["ts"].tolist() == [pd.Timestamp("2024-03-05 01:00", tz="UTC"),
                                       pd.Timestamp("2024-03-06 12:30", tz="UTC")]
    part = next(p for p in rep.parts if p.name == "contacts[calls]")
    assert part.rows_in == 3 and part.dropped == {"channel not in map": 1}
