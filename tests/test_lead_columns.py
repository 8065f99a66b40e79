"""Extra columns of the leads table (CRM fields beyond the contract's): kept by the loader,
computed by the feature job, chosen at training and carried by the model, computed alike by
batch and HTTP scoring. Tiny frames; the end-to-end part trains one small model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import model_reference, private_env

from leadscore import contract, registry
from leadscore import simulate as sim
from leadscore.features import catalog as cat
from leadscore.features import job
from leadscore.nightly import batch
from leadscore.scoring.scorer import Scorer
from leadscore.training.config import ExperimentConfig
from leadscore.training.run import train
from leadscore.training.vocabulary import choose_lead_columns

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
    assert LOAN.sentence(float("nan")) == "CRM field loan_preapproved is empty"


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


# --------------------------------------------------------------------------- training

def _with_crm_fields(d: sim.SimData, seed: int) -> pd.DataFrame:
    """Leads whose CRM fields drive conversion (``lead_origin``: most buyers came by
    referral; ``loan_preapproved``: buyers mostly were), beside columns a model must not
    use: an id, free text, a time stamp and a mostly-empty field."""
    rng = np.random.default_rng(seed)
    leads = d.leads.copy()
    buyers = set(d.events.loc[d.events["event_type"] == "order", "lead_id"])
    buys = leads["lead_id"].isin(buyers).to_numpy()
    n = len(leads)
    other = rng.choice(["paid_search", "walk_in", "partner"], n)
    leads["lead_origin"] = np.where(buys & (rng.random(n) < 0.8), "referral", other)
    leads["loan_preapproved"] = np.where(buys, rng.random(n) < 0.8, rng.random(n) < 0.1
                                         ).astype(float)
    leads["crm_ref"] = [f"R{i:06d}" for i in range(n)]
    leads["notes"] = [f"called back on day {i} about colour {i % 97}" for i in range(n)]
    leads["form_filled_at"] = leads["created_at"].astype(str)
    leads["rarely_set"] = np.where(rng.random(n) < 0.03, "x", None)
    return leads


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("leadcols")
    mp = private_env(root)
    try:
        d = sim.simulate(sim.SimConfig(n_leads=600, days=120, seed=5))
        d.leads = _with_crm_fields(d, 5)
        data = root / "data"
        sim.write(d, data)
        cfg = ExperimentConfig(model="conversion", vocabulary={"event_types": 0},
                               params={"num_boost_round": 60, "min_data_in_leaf": 10})
        res = train(data, cfg)
        model, _ = registry.load("conversion", res.alias)
        yield {"root": root, "data": data, "res": res, "model": model}
    finally:
        mp.undo()


LEARNT = {"lead_origin": "category", "loan_preapproved": "float"}


def test_training_chooses_crm_fields_and_the_model_carries_them(run):
    model, res = run["model"], run["res"]
    assert model.meta["vocabulary"]["lead_columns"] == LEARNT
    assert cat.lead_columns_of(model.features) == LEARNT
    gain = dict(zip(model.features, model.booster.feature_importance("gain"), strict=True))
    assert all(gain[cat.lead_column_feature(c, t).name] > 0 for c, t in LEARNT.items())
    assert "referral" in model.categories[cat.lead_column_feature(*ORIGIN_T).name]
    import mlflow

    r = mlflow.tracking.MlflowClient().get_run(res.run_id)
    assert r.data.params["vocab_lead_columns"] == "2"
    assert json.loads(r.data.tags["leadscore.lead_columns"]) == LEARNT
    path = mlflow.artifacts.download_artifacts(run_id=res.run_id,
                                               artifact_path="vocabulary.json",
                                               dst_path=str(run["root"] / "dl"))
    assert json.loads(Path(path).read_text())["lead_columns"] == LEARNT


ORIGIN_T = ("lead_origin", "category")


def test_the_choice_options(run):
    ds = contract.load(run["data"])
    t = pd.Timestamp("2030-01-01", tz="UTC")
    assert choose_lead_columns(ds.con, t) == LEARNT
    assert choose_lead_columns(ds.con, t, exclude=["lead_origin"]) == {
        "loan_preapproved": "float"}
    assert choose_lead_columns(ds.con, t, "none") == {}
    assert choose_lead_columns(ds.con, t, ["notes", "loan_preapproved"]) == {
        "notes": "category", "loan_preapproved": "float"}
    assert "rarely_set" in choose_lead_columns(ds.con, t, min_present=0.01)
    with pytest.raises(ValueError, match="budget_band"):
        choose_lead_columns(ds.con, t, ["budget_band"])


@pytest.mark.parametrize("hour", [0, 7], ids=["kept-rollups", "from-events"])
def test_batch_rescoring_computes_crm_fields_as_training(run, tmp_path, hour):
    model, data = run["model"], run["data"]
    as_of = pd.Timestamp("2026-04-20", tz="UTC") + pd.Timedelta(hours=hour)
    out = tmp_path / "scores"
    batch.rescore(data, as_of, out, models=["conversion"], scorer=Scorer({"conversion": model}),
                  cache=tmp_path / "cache", bucket_leads=300)
    got = pd.read_parquet(out).set_index("lead_id")
    want = model_reference(data, model, as_of)
    both = got.join(want[["p"]], how="inner")
    assert len(both) == len(want) > 50
    np.testing.assert_allclose(both["p_convert"], both["p"], rtol=1e-9)
    assert got["reasons"].str.contains("CRM field").any()


def _runtime(tmp_path, scorer, dealers, store_from=None):
    from leadscore.serving import store as online
    from leadscore.serving.auth import KeyRing, write_key_file
    from leadscore.serving.runtime import Runtime

    keys = write_key_file(tmp_path / "keys.json", {"t": (KEY, dealers)})
    runtime = Runtime(online.OnlineStore(tmp_path / "features.db"), KeyRing.from_file(keys),
                      loader=lambda: scorer, reload_seconds=0)
    assert runtime.reload()
    return runtime


KEY = "tenant-leadcols-key"


def test_http_inline_attributes_score_as_the_batch(run, tmp_path):
    from fastapi.testclient import TestClient

    from leadscore.serving.api import create_app

    model, data = run["model"], run["data"]
    scorer = Scorer({"conversion": model})
    as_of = pd.Timestamp("2026-04-20", tz="UTC")
    want = model_reference(data, model, as_of)
    ds = contract.load(data)
    leads = ds.frame("leads").set_index("lead_id")
    ev = ds.frame("events")
    ct = ds.frame("contacts")
    ids = [i for i in want.index if leads.loc[i, "lead_origin"] == "referral"][:2]
    (tmp_path / "features.db").parent.mkdir(exist_ok=True)
    online_rows = want.reset_index().drop(columns=["p"])
    from leadscore.serving import store as online

    online.write(online_rows, tmp_path / "features.db")
    runtime = _runtime(tmp_path, scorer, sorted(leads["dealer_id"].unique()))

    def inline(lead_id, attributes):
        lead = leads.loc[lead_id]
        mine = ev[(ev["lead_id"] == lead_id)]
        return {
            "lead_id": lead_id, "dealer_id": lead["dealer_id"],
            "created_at": lead["created_at"].isoformat(), "source": lead["source"],
            "tz": lead["tz"], "attributes": attributes,
            **{c: lead[c] for c in ("intended_model", "budget", "city")
               if not pd.isna(lead[c])},
            "events": [{"ts": t.isoformat(), "event_type": e,
                        **({"model": m} if isinstance(m, str) else {}),
                        **({"value": v} if v == v and v is not None else {}),
                        **({"ingested_at": i.isoformat()} if not pd.isna(i) else {})}
                       for t, e, m, v, i in mine[["ts", "event_type", "model", "value",
                                                  "ingested_at"]].itertuples(index=False)],
            # the lead's contacts too: the batch reference counts them
            "contacts": [{"ts": t.isoformat(), "channel": c, "outcome": o}
                         for t, c, o in ct[ct["lead_id"] == lead_id][
                             ["ts", "channel", "outcome"]].itertuples(index=False)
                         if t < as_of]}

    a, b = ids
    body = {"as_of": as_of.isoformat(), "leads": [
        inline(a, {"lead_origin": "referral",
                   "loan_preapproved": int(leads.loc[a, "loan_preapproved"])}),
        inline(b, None)]}
    with TestClient(create_app(runtime), raise_server_exceptions=False) as client:
        r = client.post("/score", json=body, headers={"X-API-Key": KEY})
        assert r.status_code == 200, r.text
        got = r.json()["results"]
        too_many = {f"f{i}": i for i in range(51)}
        bad = client.post("/score", json={"leads": [{**inline(a, too_many)}]},
                          headers={"X-API-Key": KEY})
        assert bad.status_code == 422
        bad = client.post("/score", json={"leads": [{**inline(a, {"source": "x"})}]},
                          headers={"X-API-Key": KEY})
        assert bad.status_code == 422
        by_id = client.post("/score", json={"leads": [{"lead_id": a}]},
                            headers={"X-API-Key": KEY})
        assert by_id.status_code == 200, by_id.text
    assert got[0]["p_convert"] == pytest.approx(want.loc[a, "p"], rel=1e-9)
    assert by_id.json()["results"][0]["p_convert"] == pytest.approx(want.loc[a, "p"], rel=1e-9)
    # without its CRM fields the lead scores with them missing (no error)
    f = want.loc[[b]].reset_index()
    for c, t in LEARNT.items():
        n = cat.lead_column_feature(c, t).name
        f[n] = pd.Series([None], dtype=f[n].dtype)
    assert got[1]["p_convert"] == pytest.approx(model.predict_proba(f)[0], rel=1e-9)


def test_the_store_holds_the_champions_crm_fields(run, tmp_path):
    from typer.testing import CliRunner

    from leadscore import cli

    assert run["res"].alias == registry.CHAMPION
    r = CliRunner().invoke(cli.app, [
        "features", "--data", str(run["data"]), "--as-of", "2026-04-20", "--only-open",
        "--out", str(tmp_path / "f.parquet"), "--store", str(tmp_path / "features.db"),
        "--vocabulary", "champions"])
    assert r.exit_code == 0, r.output
    assert "extra columns kept: lead_origin, loan_preapproved" in r.output
    f = pd.read_parquet(tmp_path / "f.parquet")
    assert set(f["col__lead_origin__cat"].dropna()) >= {"referral", "paid_search"}
    assert f["col__loan_preapproved__num"].notna().all()
