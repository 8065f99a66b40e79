"""Extra columns of the leads table (CRM fields beyond the contract's): kept by the loader,
computed by the feature job, chosen at training and carried by the model, computed alike by
batch and HTTP scoring. Tiny frames; the end-to-end part trains one small model."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from leadscore import contract
from leadscore.features import catalog as cat
from leadscore.features import job

CLOCK = pd.Timestamp("2025-06-01", tz="UTC")


def _leads() -> pd.DataFrame:
    return pd.DataFrame({
        "lead_id": ["L1", "L2", "L3", "L1"],
        "dealer_id": ["D1", "D1", "D2", "D1"],
        "created_at": ["2025-01-01T00:00:00Z"] * 3 + ["2025-01-02T00:00:00Z"],
        "source": ["website"] * 4,
        "lead_origin": ["paid_search", " ", "referral", "x"],
        "loan_preapproved": [1, 0, None, 1],
        "_private": ["a", "b", "c", "d"],
    })


def _write(folder, leads: pd.DataFrame, fmt: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    events = pd.DataFrame({"lead_id": ["L1"], "ts": ["2025-01-03T00:00:00Z"],
                           "event_type": ["page_view"]})
    for name, df in (("leads", leads), ("events", events)):
        if fmt == "csv":
            df.to_csv(folder / f"{name}.csv", index=False)
        else:
            pq.write_table(pa.Table.from_pandas(df, preserve_index=False),
                           folder / f"{name}.parquet")


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_the_loader_keeps_extra_lead_columns_and_reports_them(tmp_path, fmt):
    _write(tmp_path / "d", _leads(), fmt)
    ds = contract.load(tmp_path / "d", clock=CLOCK)
    got = ds.frame("leads").set_index("lead_id")
    rep = ds.reports["leads"]
    assert rep.extra_columns == ["lead_origin", "loan_preapproved"]  # "_..." is the loader's
    assert "extra columns kept: lead_origin, loan_preapproved" in ds.summary()
    # validation never fails because of them: the conflicting L1 row is the only one out
    assert rep.rows_ok == 3 and rep.quarantined == {"conflicting_lead_id": 1}
    assert got.loc["L1", "lead_origin"] == "paid_search"
    assert pd.isna(got.loc["L2", "lead_origin"])  # blank text is missing
    assert float(got.loc["L1", "loan_preapproved"]) == 1.0
    assert pd.isna(got.loc["L3", "loan_preapproved"])
    assert "_private" not in got.columns


# --------------------------------------------------------------------------- the feature job

ORIGIN = cat.lead_column_feature("lead_origin", "category")
LOAN = cat.lead_column_feature("loan_preapproved", "float")
ABSENT = cat.lead_column_feature("not in this data", "float")


def test_lead_column_features_resolve_by_name_and_read_as_crm_fields():
    assert cat.feature(ORIGIN.name) == ORIGIN and cat.feature(ABSENT.name) == ABSENT
    assert ABSENT.name == "col__not%20in%20this%20data__num"
    assert cat.lead_columns_of(["events_7d", LOAN.name, ORIGIN.name]) == {
        "loan_preapproved": "float", "lead_origin": "category"}
    assert ORIGIN.sentence("paid_search") == "CRM field lead_origin: paid_search"
    assert cat.lead_column_feature("budget_band", "float").sentence(3.0) == \
        "CRM field budget_band 3"
    assert LOAN.sentence(float("nan")) == "CRM field loan_preapproved: none recorded"


def _tiny_con(tmp_path, fmt="csv"):
    leads = _leads().iloc[:3].assign(loan_preapproved=["1", "0", "n/a"])
    if fmt == "parquet":
        leads["loan_preapproved"] = [1.0, 0.0, None]
    _write(tmp_path / fmt, leads, fmt)
    return contract.load(tmp_path / fmt, clock=CLOCK).con


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_the_job_computes_lead_columns_and_an_absent_one_is_missing(tmp_path, fmt):
    con = _tiny_con(tmp_path, fmt)
    feats = [*cat.CATALOG, ORIGIN, LOAN, ABSENT]
    at = pd.Timestamp("2025-02-01", tz="UTC")
    got = job.to_pandas(job.compute(con, [at], feats), feats).set_index("lead_id")
    assert list(got[ORIGIN.name].astype(object).fillna("-")) == ["paid_search", "-", "referral"]
    assert str(got[ORIGIN.name].dtype) == "category"
    assert got[LOAN.name].tolist()[:2] == [1.0, 0.0] and pd.isna(got.loc["L3", LOAN.name])
    assert got[ABSENT.name].isna().all()
    # the one-statement SQL (per-lead cutoffs) computes the same
    pairs = pd.DataFrame({"lead_id": ["L1", "L2", "L3"], "as_of": [at] * 3})
    sql = job.to_pandas(job.compute_pairs(con, pairs, feats), feats).set_index("lead_id")
    for f in (ORIGIN, LOAN, ABSENT):
        pd.testing.assert_series_equal(sql[f.name].astype(object), got[f.name].astype(object),
                                       check_names=False)
