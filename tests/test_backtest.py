"""``leadscore backtest``: per-dealer metrics equal ones computed independently from the same
scores and outcomes, censored windows are no negatives, and the page is one self-contained
file with a chart per dealer, in the manager's language."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from leadscore import registry
from leadscore.cli import app
from leadscore.features import catalog, job
from leadscore.scoring.scorer import Scorer
from leadscore.training import backtest

runner = CliRunner()


def _end(sim_data) -> pd.Timestamp:
    ev = pd.read_parquet(sim_data / "events.parquet", columns=["ts"])
    return pd.to_datetime(ev["ts"], utc=True).max().floor("D")


@pytest.fixture(scope="module")
def as_of(sim_data) -> pd.Timestamp:
    """Forty days before the data ends: every 30-day window is observed."""
    return _end(sim_data) - pd.Timedelta(days=40)


def _cli(sim_data, as_of, out, *extra):
    res = runner.invoke(app, ["backtest", "--data", str(sim_data), "--as-of", str(as_of),
                              "--out", str(out), *extra])
    return res


@pytest.fixture(scope="module")
def conversion_run(trained, sim_data, as_of, tmp_path_factory):
    out = tmp_path_factory.mktemp("backtest")
    res = _cli(sim_data, as_of, out, "--model", "conversion", "--lang", "zh-CN")
    assert res.exit_code == 0, res.output
    return out, json.loads((out / "backtest.json").read_text())


def _ece(y: np.ndarray, p: np.ndarray) -> float:
    """Ten equal-width bins, each |rate - mean score| weighted by its share of rows."""
    df = pd.DataFrame({"y": y, "p": p, "b": np.minimum((p * 10).astype(int), 9)})
    g = df.groupby("b").agg(n=("y", "size"), y=("y", "mean"), p=("p", "mean"))
    return float((g["n"] * (g["y"] - g["p"]).abs()).sum() / len(df))


def _independent(sim_data, as_of) -> pd.DataFrame:
    """Open leads at ``as_of`` scored by the champion alone, labelled by pandas: an order
    in (as_of, as_of + 30 days]."""
    from leadscore import contract

    model = registry.load("conversion")[0]
    feats_def = catalog.job_features(model.features)
    ds = contract.load(sim_data)
    feats = job.to_pandas(job.compute(ds.con, [as_of], feats_def, only_open=True), feats_def)
    scored = Scorer({"conversion": model}).score(feats, reasons=0)
    ev = pd.read_parquet(sim_data / "events.parquet")
    ts = pd.to_datetime(ev["ts"], utc=True)
    hit = ev.loc[(ev["event_type"] == "order") & (ts > as_of)
                 & (ts <= as_of + pd.Timedelta(days=30)), "lead_id"].astype(str)
    return pd.DataFrame({"dealer_id": scored["dealer_id"], "p": scored["p_convert"],
                         "y": scored["lead_id"].isin(set(hit)).astype(int)})


def test_per_dealer_auc_and_ece_equal_independent_ones(conversion_run, sim_data, as_of):
    _, rep = conversion_run
    ref = _independent(sim_data, as_of)
    assert rep["overall"]["n"] == len(ref) and rep["overall"]["n_censored"] == 0
    assert rep["overall"]["positives"] == ref["y"].sum() > 0
    assert sorted(rep["dealers"]) == sorted(ref["dealer_id"].unique())
    for dealer, d in ref.groupby("dealer_id"):
        got = rep["dealers"][dealer]
        assert (got["n"], got["positives"]) == (len(d), d["y"].sum())
        assert got["roc_auc"] == pytest.approx(roc_auc_score(d["y"], d["p"]), abs=0.002)
        assert got["ece"] == pytest.approx(_ece(d["y"].to_numpy(), d["p"].to_numpy()),
                                           abs=0.002)
        assert got["small"] is (len(d) < 30)
        by = got["rate_by_grade"]
        assert sum(g["n"] for g in by.values()) == len(d)
        assert set(by) <= {"H", "A", "B", "C", "N"}
    assert rep["grade_kind"] == "intent_grade" and rep["horizon_days"] == 30
    assert set(rep["sources"]) and sum(s["n"] for s in rep["sources"].values()) == len(ref)


def test_html_one_chart_per_dealer_offline_in_chinese(conversion_run):
    out, rep = conversion_run
    page = (out / "backtest.html").read_text()
    assert page.count("<svg") == len(rep["dealers"]) > 1
    links = re.findall(r'(?:src|href)\s*=\s*["\']([^"\']*)', page, flags=re.I)
    assert not [u for u in links if "http" in u.lower()]
    assert "<script" not in page.lower() and "<link" not in page.lower()
    for word in ("经销商", "实际比例", "校准误差", "意向等级"):
        assert word in page
    assert 'lang="zh-CN"' in page


def test_too_late_as_of_is_censored_exit_2(trained, sim_data, tmp_path):
    late = _end(sim_data) - pd.Timedelta(days=5)
    res = _cli(sim_data, late, tmp_path, "--model", "conversion")
    assert res.exit_code == 2
    assert "too late" in res.output and "30-day horizon" in res.output
    assert not (tmp_path / "backtest.json").exists()


def test_churn_by_deciles_and_logged_to_the_run(trained, sim_data, as_of, tmp_path):
    res = _cli(sim_data, as_of, tmp_path, "--model", "churn", "--version",
               registry.resolve("churn").version, "--min-leads", "100000", "--log-to-mlflow")
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "backtest.json").read_text())
    assert rep["grade_kind"] == "decile" and rep["entity"] == "open_or_owner"
    assert all(d["small"] for d in rep["dealers"].values())
    assert set(rep["overall"]["rate_by_grade"]) <= {f"D{i}" for i in range(1, 11)}
    where = f"backtest/{as_of.date()}"
    got = {a.path for a in registry.client().list_artifacts(rep["run_id"], where)}
    assert got == {f"{where}/backtest.json", f"{where}/backtest.html"}
    assert 'lang="en"' in (tmp_path / "backtest.html").read_text()


def test_contact_by_urgency_with_its_own_horizon(trained, sim_data, as_of, tmp_path):
    res = _cli(sim_data, as_of, tmp_path, "--model", "contact")
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "backtest.json").read_text())
    assert rep["horizon_days"] == 3 and rep["grade_kind"] == "contact_urgency"
    by = rep["overall"]["rate_by_grade"]
    assert set(by) <= {"now", "within_3_days", "nurture"}
    assert sum(g["n"] for g in by.values()) == rep["overall"]["n"]


def test_unknown_version_and_slot_model_exit_2(trained, sim_data, as_of, tmp_path):
    res = _cli(sim_data, as_of, tmp_path, "--model", "conversion", "--version", "999")
    assert res.exit_code == 2 and "no version '999'" in res.output
    res = _cli(sim_data, as_of, tmp_path, "--model", "contact-slot")
    assert res.exit_code == 2 and "contact-slot" in res.output


def test_group_metrics_small_group_and_one_class():
    rows = pd.DataFrame({"label": [0, 0, 0], "p": [0.1, 0.2, 0.3], "grade": ["B", "N", "N"]})
    m = backtest.group_metrics(rows, "intent_grade", min_leads=30)
    assert m["small"] and m["roc_auc"] is None and m["positives"] == 0
    assert list(m["rate_by_grade"]) == ["B", "N"] and m["rate_by_grade"]["N"]["n"] == 2
    assert backtest.deciles(pd.Series([0.9, 0.5, 0.5, 0.1])).tolist() == ["D3", "D5", "D5",
                                                                            "D10"]
