"""The data-driven vocabulary end to end: a custom event type that drives conversion gets
features of its own at training, the registered model and its MLflow run carry the choice,
and batch rescoring (kept rollups and the events), HTTP inline and HTTP by id all compute
them as training did. Small data, few trees."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import model_reference, private_env
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from leadscore import cli, contract, registry
from leadscore import simulate as sim
from leadscore.features import catalog as cat
from leadscore.nightly import batch
from leadscore.scoring.scorer import Scorer
from leadscore.serving import store as online
from leadscore.serving.api import create_app
from leadscore.serving.auth import KeyRing, write_key_file
from leadscore.serving.runtime import Runtime, features_from_inline
from leadscore.training.config import ExperimentConfig
from leadscore.training.run import train
from leadscore.training.vocabulary import choose_event_types

KEY = "tenant-vocab-key"
HEADERS = {"X-API-Key": KEY}
CUSTOM = "trade_in_valuation"
TRADE_IN = cat.vocabulary_features([CUSTOM])


def _custom_events(d: sim.SimData, seed: int) -> pd.DataFrame:
    """Trade-in valuations a few days before most orders and rarely otherwise (the signal),
    a frequent step without signal, and a step too rare for the vocabulary."""
    rng = np.random.default_rng(seed)
    ev = d.events
    orders = ev[ev["event_type"] == "order"].drop_duplicates("lead_id")
    orders = orders[rng.random(len(orders)) < 0.85]
    rows = []
    for lead_id, ts in zip(orders["lead_id"], orders["ts"], strict=True):
        for _ in range(2):
            rows.append((lead_id, ts - pd.Timedelta(hours=float(rng.uniform(12, 120))), CUSTOM))
    leads = d.leads["lead_id"].to_numpy()
    created = d.leads.set_index("lead_id")["created_at"]
    for lead_id in rng.choice(leads, len(leads) // 20, replace=False):
        rows.append((lead_id, created[lead_id] + pd.Timedelta(days=float(rng.uniform(0, 20))),
                     CUSTOM))
    for lead_id in rng.choice(leads, len(leads) // 2):
        rows.append((lead_id, created[lead_id] + pd.Timedelta(days=float(rng.uniform(0, 30))),
                     "brochure_download"))
    for lead_id in leads[:2]:
        rows.append((lead_id, created[lead_id] + pd.Timedelta(hours=1), "rare_step"))
    extra = pd.DataFrame(rows, columns=["lead_id", "ts", "event_type"])
    extra["ts"] = pd.to_datetime(extra["ts"], utc=True).astype(ev["ts"].dtype)
    extra["ingested_at"] = extra["ts"]
    out = pd.concat([ev, extra], ignore_index=True)
    return out.sort_values("ts", kind="stable").reset_index(drop=True)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("vocab")
    mp = private_env(root)
    try:
        d = sim.simulate(sim.SimConfig(n_leads=700, days=120, seed=21))
        d.events = _custom_events(d, 21)
        data = root / "data"
        sim.write(d, data)
        cfg = ExperimentConfig(model="conversion", vocabulary={"event_types": 3, "min_events": 5},
                               params={"num_boost_round": 80, "min_data_in_leaf": 10})
        res = train(data, cfg)
        model, _ = registry.load("conversion", res.alias)
        yield {"root": root, "data": data, "res": res, "model": model}
    finally:
        mp.undo()


def test_training_chooses_the_vocabulary_and_the_model_carries_it(run):
    model, res = run["model"], run["res"]
    vocab = model.meta["vocabulary"]["event_types"]
    assert vocab[:2] == ["brochure_download", CUSTOM]  # by frequency
    assert "rare_step" not in vocab  # below min_events: it counts as other
    assert all(f.name in model.features for f in TRADE_IN)
    assert cat.vocabulary_of(model.features) == vocab
    # the custom type drives the label: the model uses its features
    gain = dict(zip(model.features, model.booster.feature_importance("gain"), strict=True))
    assert sum(gain[f.name] for f in TRADE_IN) > 0
    # MLflow logs the choice
    import mlflow

    client = mlflow.tracking.MlflowClient()
    r = client.get_run(res.run_id)
    assert r.data.params["vocab_event_types"] == str(len(vocab))
    assert json.loads(r.data.tags["leadscore.vocabulary"]) == vocab
    path = mlflow.artifacts.download_artifacts(run_id=res.run_id,
                                               artifact_path="vocabulary.json",
                                               dst_path=str(run["root"] / "dl"))
    logged = json.loads(Path(path).read_text())
    assert logged["event_types"] == vocab and TRADE_IN[1].name in logged["features"]


def test_no_look_ahead_in_the_choice(con):
    """Types are counted on events before the given instant (and ingested by it)."""
    t = pd.Timestamp("2026-03-01", tz="UTC")
    leads = pd.DataFrame({"lead_id": ["A"], "dealer_id": ["D"], "created_at": [t - pd.Timedelta(
        days=30)]})
    events = pd.DataFrame({
        "lead_id": ["A"] * 7, "event_type": ["x", "x", "y", "y", "y", "y", "y"],
        "ts": [t - pd.Timedelta(days=d) for d in (3, 2, 1, 1, 1, 1, 0)],
        "ingested_at": [t - pd.Timedelta(days=3), t - pd.Timedelta(days=2), t, t, t,
                        t + pd.Timedelta(hours=1), t]})
    events["ts"] = events["ts"].astype("datetime64[us, UTC]")
    events["ingested_at"] = events["ingested_at"].astype("datetime64[us, UTC]")
    contract.register_frames(con, leads, events)
    # y: three visible (one ingested later, one at the cutoff)
    assert choose_event_types(con, t, 5) == ["y", "x"]
    assert choose_event_types(con, t, 1) == ["y"]
    assert choose_event_types(con, t - pd.Timedelta(days=1), 5) == ["x"]
    assert choose_event_types(con, t, 5, min_events=3) == ["y"]


@pytest.mark.parametrize("hour", [0, 7], ids=["kept-rollups", "from-events"])
def test_batch_rescoring_computes_the_vocabulary_as_training(run, tmp_path, hour):
    model, data = run["model"], run["data"]
    ds = contract.load(data)
    end = pd.Timestamp(ds.con.execute("SELECT max(ts) FROM events").fetchone()[0])
    as_of = end.floor("D") - pd.Timedelta(days=10) + pd.Timedelta(hours=hour)
    scorer = Scorer({"conversion": model})
    out = tmp_path / "scores"
    batch.rescore(data, as_of, out, models=["conversion"], scorer=scorer,
                  cache=tmp_path / "cache", bucket_leads=300)
    got = pd.read_parquet(out).set_index("lead_id")
    want = model_reference(data, model, as_of)
    both = got.join(want[["p"]], how="inner")
    assert len(both) == len(want) > 50
    np.testing.assert_allclose(both["p_convert"], both["p"], rtol=1e-9)
    # reasons name the custom type as the data spells it
    assert got["reasons"].str.contains(CUSTOM).any()


def test_http_inline_and_by_id_score_as_the_batch(run, tmp_path):
    model, data = run["model"], run["data"]
    scorer = Scorer({"conversion": model})
    ds = contract.load(data)
    as_of = pd.Timestamp("2026-04-20", tz="UTC")
    want = model_reference(data, model, as_of)
    # the online store holds what the champions need
    r = CliRunner().invoke(cli.app, [
        "features", "--data", str(data), "--as-of", as_of.isoformat(), "--only-open",
        "--out", str(tmp_path / "f.parquet"), "--store", str(tmp_path / "features.db"),
        "--vocabulary", "champions"])
    assert r.exit_code == 0, r.output
    assert TRADE_IN[1].name in pd.read_parquet(tmp_path / "f.parquet").columns
    dealers = sorted(ds.frame("leads")["dealer_id"].unique())
    keys = write_key_file(tmp_path / "keys.json", {"t": (KEY, dealers)})
    runtime = Runtime(online.OnlineStore(tmp_path / "features.db"), KeyRing.from_file(keys),
                      loader=lambda: scorer, reload_seconds=0)
    assert runtime.reload()
    ev, ct = ds.frame("events"), ds.frame("contacts")
    lead_id = ev.loc[(ev["event_type"] == CUSTOM) & (ev["ts"] < as_of)
                     & ev["lead_id"].isin(want.index), "lead_id"].iloc[-1]
    lead = ds.frame("leads").set_index("lead_id").loc[lead_id]
    mine = ev[(ev["lead_id"] == lead_id)]
    inline = {
        "lead_id": lead_id, "dealer_id": lead["dealer_id"],
        "created_at": lead["created_at"].isoformat(), "source": lead["source"],
        "tz": lead["tz"],
        "events": [{"ts": t.isoformat(), "event_type": e,
                    **({"model": m} if isinstance(m, str) else {}),
                    **({"value": v} if v == v and v is not None else {}),
                    **({"ingested_at": i.isoformat()} if not pd.isna(i) else {})}
                   for t, e, m, v, i in mine[["ts", "event_type", "model", "value",
                                              "ingested_at"]].itertuples(index=False)],
        # the lead's contacts too: the batch reference counts them
        "contacts": [{"ts": t.isoformat(), "channel": c, "outcome": o}
                     for t, c, o in ct[ct["lead_id"] == lead_id][
                         ["ts", "channel", "outcome"]].itertuples(index=False) if t < as_of],
    }
    for c in ("intended_model", "budget", "city"):
        if not pd.isna(lead[c]):
            inline[c] = lead[c]
    with TestClient(create_app(runtime), raise_server_exceptions=False) as client:
        r = client.post("/score", json={"as_of": as_of.isoformat(), "leads": [inline]},
                        headers=HEADERS)
        assert r.status_code == 200, r.text
        by_inline = r.json()["results"][0]
        r = client.post("/score", json={"leads": [{"lead_id": lead_id}]}, headers=HEADERS)
        assert r.status_code == 200, r.text
        by_id = r.json()["results"][0]
    assert by_inline["p_convert"] == pytest.approx(want.loc[lead_id, "p"], rel=1e-9)
    assert by_id["p_convert"] == pytest.approx(want.loc[lead_id, "p"], rel=1e-9)


def test_features_vocabulary_option(run, tmp_path):
    r = CliRunner().invoke(cli.app, [
        "features", "--data", str(run["data"]), "--as-of", "2026-04-01",
        "--out", str(tmp_path / "f.parquet"), "--vocabulary", "page_view,x"])
    assert r.exit_code == 2 and "page_view" in r.output
    r = CliRunner().invoke(cli.app, [
        "features", "--data", str(run["data"]), "--as-of", "2026-04-01",
        "--out", str(tmp_path / "f.parquet"), "--vocabulary", "offer returned, " + CUSTOM])
    assert r.exit_code == 0, r.output
    cols = pd.read_parquet(tmp_path / "f.parquet").columns
    assert "type__offer%20returned__30d" in cols and TRADE_IN[0].name in cols


def test_a_type_never_seen_in_training_counts_as_other(run):
    model = run["model"]
    scorer = Scorer({"conversion": model})
    t = pd.Timestamp("2026-03-01", tz="UTC")
    leads = pd.DataFrame({"lead_id": ["A", "B"], "dealer_id": ["D1", "D1"],
                          "created_at": [t - pd.Timedelta(days=20)] * 2,
                          "source": ["website"] * 2, "tz": ["Asia/Shanghai"] * 2})
    events = pd.DataFrame({"lead_id": ["A", "B"], "event_type": ["loan_preapproval",
                                                                 "rare_step"],
                           "ts": [t - pd.Timedelta(days=2)] * 2})
    events["ts"] = events["ts"].astype("datetime64[us, UTC]")
    f, _ = features_from_inline(leads, events, pd.DataFrame(), t, clock=t,
                                features=scorer.job_features)
    assert not any("loan_preapproval" in c or "rare_step" in c for c in f.columns)
    assert f["other_events_30d"].tolist() == [1.0, 1.0]
    assert (f[TRADE_IN[1].name] == 0).all()
    p = model.predict_proba(f)
    assert p[0] == p[1]  # two unknown types read the same


def test_promotion_compares_models_with_other_vocabularies(run):
    """A challenger trained with another vocabulary (and another holdout, so the champion is
    scored on it rather than by its logged predictions): its holdout also holds the
    champion's vocabulary columns, so promotion scores both on it."""
    from leadscore.training import promote

    cfg = ExperimentConfig(model="conversion", vocabulary={"event_types": 1, "min_events": 5},
                           params={"num_boost_round": 40, "min_data_in_leaf": 10},
                           split="entity", seed=1)
    res = train(run["data"], cfg)
    assert res.alias == registry.CHALLENGER
    chall, _ = registry.load("conversion", registry.CHALLENGER)
    assert chall.meta["vocabulary"]["event_types"] == ["brochure_download"]
    assert not any(CUSTOM in f for f in chall.features)
    d = promote.promote_best("conversion")
    assert d.champion_value is not None and d.challenger_value is not None, d


def test_a_store_without_the_vocabulary_is_a_deployment_error(run, tmp_path):
    """Lookups by id in a store refreshed without ``--vocabulary`` answer 503 (the service
    log names the missing features) rather than scoring the vocabulary as missing."""
    model, data = run["model"], run["data"]
    scorer = Scorer({"conversion": model})
    r = CliRunner().invoke(cli.app, [
        "features", "--data", str(data), "--as-of", "2026-04-20", "--only-open",
        "--out", str(tmp_path / "f.parquet"), "--store", str(tmp_path / "features.db")])
    assert r.exit_code == 0, r.output
    f = pd.read_parquet(tmp_path / "f.parquet")
    keys = write_key_file(tmp_path / "keys.json", {"t": (KEY, sorted(f["dealer_id"].unique()))})
    runtime = Runtime(online.OnlineStore(tmp_path / "features.db"), KeyRing.from_file(keys),
                      loader=lambda: scorer, reload_seconds=0)
    assert runtime.reload()
    with TestClient(create_app(runtime), raise_server_exceptions=False) as client:
        r = client.post("/score", json={"leads": [{"lead_id": f["lead_id"].iloc[0]}]},
                        headers=HEADERS)
    assert r.status_code == 503, r.text
