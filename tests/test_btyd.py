"""The classical churn baseline (leadscore.training.btyd) on data simulated from BG/NBD."""

from __future__ import annotations

from dataclasses import replace

import duckdb
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from leadscore.training import btyd, evaluate

CUT = pd.Timestamp("2024-07-01", tz="UTC")
TRUE = {"r": 0.8, "alpha": 20.0, "a": 0.8, "b": 2.5}
H = 60.0


def simulate_bgnbd(n: int, seed: int, horizon: float = H, params=TRUE) -> pd.DataFrame:
    """Purchases of ``n`` customers born over the 300 days before CUT, simulated from BG/NBD
    up to CUT + horizon: rate λ ~ Gamma(r, α), death after each purchase with p ~ Beta(a, b)."""
    rng = np.random.default_rng(seed)
    lam = rng.gamma(params["r"], 1 / params["alpha"], n)
    p = rng.beta(params["a"], params["b"], n)
    born = rng.uniform(-300, -1, n)
    rows = []
    for i in range(n):
        t = born[i]
        while t < horizon:
            rows.append((f"c{i}", t))
            if t > born[i] and rng.random() < p[i]:
                break
            t += rng.exponential(1 / lam[i])
    ev = pd.DataFrame(rows, columns=["lead_id", "day"])
    ev["ts"] = CUT + pd.to_timedelta(ev["day"], unit="D")
    return ev


def connect(ev: pd.DataFrame) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    events = ev.assign(event_type="order", ingested_at=ev.get("ingested_at", ev["ts"]))
    leads = events.groupby("lead_id", as_index=False)["ts"].min().rename(
        columns={"ts": "created_at"})
    con.register("_ev", events[["lead_id", "ts", "event_type", "ingested_at"]])
    con.register("_leads", leads)
    con.execute("CREATE TABLE events AS SELECT * FROM _ev")
    con.execute("CREATE TABLE leads AS SELECT * FROM _leads")
    return con


def pairs_at(ev: pd.DataFrame, cut=CUT) -> pd.DataFrame:
    ids = sorted(ev.loc[ev["ts"] < cut, "lead_id"].unique())
    return pd.DataFrame({"lead_id": ids, "as_of": cut})


def bought_after(ev: pd.DataFrame, pairs: pd.DataFrame, horizon: float = H) -> np.ndarray:
    after = ev[(ev["ts"] >= CUT) & (ev["ts"] < CUT + pd.Timedelta(days=horizon))]
    return pairs["lead_id"].isin(after["lead_id"]).to_numpy().astype(int)


@pytest.fixture(scope="module")
def world():
    ev = simulate_bgnbd(1500, seed=3)
    con = connect(ev)
    pairs = pairs_at(ev)
    summ = btyd.summaries(con, pairs, ["order"])
    return ev, con, pairs, summ, btyd.fit(summ, "bgnbd")


def test_summaries_count_repeat_days_before_the_cutoff():
    ev = pd.DataFrame({"lead_id": ["a"] * 5 + ["b"],
                       "ts": pd.to_datetime(["2024-06-01 08:00", "2024-06-01 20:00",
                                             "2024-06-11 09:00", "2024-06-21 10:00",
                                             "2024-07-02 10:00", "2024-06-30 23:00"], utc=True)})
    s = btyd.summaries(connect(ev), pd.DataFrame({"lead_id": ["a", "b"], "as_of": CUT}),
                       ["order"])
    # a: purchase days 06-01 (twice), 06-11, 06-21 -> 2 repeats, 20 days apart from the first
    assert s["frequency"].tolist() == [2, 0]
    assert s["recency"].tolist() == [20.0, 0.0]
    assert s["T"].tolist() == [30.0, 1.0]


def test_bgnbd_p_none_matches_simulation():
    """The closed form against the model simulated forward, for histories with and without
    repeats (the library's own version is wrong without)."""
    ev = simulate_bgnbd(30_000, seed=5)
    pairs = pairs_at(ev)
    s = btyd.summaries(connect(ev), pairs, ["order"])
    y = bought_after(ev, pairs)
    p = 1 - btyd.bgnbd_p_none(TRUE, s["frequency"].to_numpy(float),
                              s["recency"].to_numpy(float), s["T"].to_numpy(float), H)
    for group in (s["frequency"] == 0, s["frequency"].between(1, 3), s["frequency"] > 3):
        assert abs(p[group].mean() - y[group].mean()) < 0.03, group.sum()


def test_fit_recovers_the_parameters_and_ranks_alive_above_dead(world):
    ev, _con, pairs, summ, f = world
    # the purchase process is well identified; the dropout weaker (it shows in the mean p)
    assert f.params["r"] / f.params["alpha"] == pytest.approx(TRUE["r"] / TRUE["alpha"], rel=0.3)
    assert f.params["r"] == pytest.approx(TRUE["r"], rel=0.4)
    mean_p = f.params["a"] / (f.params["a"] + f.params["b"])
    assert mean_p == pytest.approx(TRUE["a"] / (TRUE["a"] + TRUE["b"]), abs=0.12)
    active = pd.DataFrame({"frequency": [8.0], "recency": [195.0], "T": [200.0]})
    gone = pd.DataFrame({"frequency": [8.0], "recency": [20.0], "T": [200.0]})
    assert f.p_purchase(active, H)[0] > 0.8 > 0.2 > f.p_purchase(gone, H)[0]
    assert roc_auc_score(bought_after(ev, pairs), f.p_purchase(summ, H)) > 0.75


def test_events_after_the_cutoff_change_nothing(world):
    """Purchases after the cutoff, or dated before it but ingested after it, are invisible
    at the cutoff: same summaries, same fit, same predictions."""
    ev, _con, pairs, summ, f = world
    rng = np.random.default_rng(0)
    who = rng.choice(pairs["lead_id"].to_numpy(), 300)
    late = pd.DataFrame({"lead_id": who, "ts": CUT + pd.to_timedelta(
        rng.uniform(0, 30, 300), unit="D")})
    backdated = pd.DataFrame({"lead_id": who, "ts": CUT - pd.to_timedelta(
        rng.uniform(0.01, 100, 300), unit="D")})
    backdated["ingested_at"] = CUT + pd.Timedelta(hours=1)
    more = pd.concat([ev.assign(ingested_at=ev["ts"]),
                      late.assign(ingested_at=late["ts"]), backdated], ignore_index=True)
    con = connect(more)
    summ2 = btyd.summaries(con, pairs, ["order"])
    pd.testing.assert_frame_equal(summ2, summ)
    p, fits = btyd.at_cutoffs(con, pairs, ["order"], H, refits=1)
    assert fits[0][1].params == pytest.approx(f.params, rel=1e-6)
    np.testing.assert_allclose(p.to_numpy(), f.p_purchase(summ, H), rtol=1e-9)


def test_each_cutoff_is_scored_by_a_fit_at_or_before_it():
    cut = [pd.Timestamp("2024-01-01", tz="UTC") + pd.Timedelta(weeks=w) for w in range(10)]
    a = btyd.anchors(cut, 3)
    assert a[0] == cut[0] and len(a) == 3 and a == sorted(a)
    assert btyd.anchors(cut[:2], 5) == cut[:2]


def test_pareto_nbd_ranks_like_the_data(world):
    ev, _con, pairs, summ, _f = world
    f = btyd.fit(summ, "pareto_nbd")
    p = f.p_purchase(summ, H)
    y = bought_after(ev, pairs)
    assert roc_auc_score(y, p) > 0.75
    assert abs(p.mean() - y.mean()) < 0.05


@pytest.fixture(scope="module")
def small_sim(tmp_path_factory):
    from leadscore import simulate as sim

    root = tmp_path_factory.mktemp("btyd_run")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlruns.db'}")
    mp.setenv("LEADSCORE_CACHE", str(root / "cache"))
    mp.chdir(root)
    sim.write(sim.simulate(sim.SimConfig(n_leads=800, days=120, seed=5)), root / "sim")
    yield root / "sim"
    mp.undo()


def test_churn_run_logs_the_classical_baseline(small_sim):
    """Each churn run fits the classical model and logs its holdout metrics beside
    LightGBM's (in the run's metrics and in MLflow), with the fits' parameters. By default
    (``btyd.use: auto``) it also logs which fit it kept and the valid AUCs it chose on."""
    import mlflow

    from leadscore.training.config import ExperimentConfig
    from leadscore.training.run import train

    res = train(small_sim, ExperimentConfig(model="churn", refit=False,
                                            btyd={"refits": 2}), register=False)
    assert 0.5 < res.metrics["btyd_roc_auc"] <= 1.0
    assert 0.0 < res.metrics["btyd_pr_auc"] <= 1.0
    run = mlflow.get_run(res.run_id)
    assert run.data.metrics["btyd_roc_auc"] == pytest.approx(res.metrics["btyd_roc_auc"])
    assert run.data.metrics["roc_auc"] == pytest.approx(res.metrics["roc_auc"])
    assert run.data.params["btyd_model"] == "bgnbd"
    fits = mlflow.artifacts.load_dict(f"runs:/{res.run_id}/btyd_fits.json")
    assert len(fits) == 2 and {"r", "alpha", "a", "b"} <= set(fits[0])
    assert run.data.params["btyd_use"] == "auto"
    auc_t = run.data.metrics["btyd_auto_heldout_auc_trees"]
    auc_s = run.data.metrics["btyd_auto_heldout_auc_start"]
    win = run.data.metrics["btyd_auto_trees_win_share"]
    kept = run.data.params["btyd_auto_choice"]
    assert kept == ("none" if win >= evaluate.CLEAR_WIN else "init_score")
    note = [n for n in res.notes if n.startswith("btyd.use auto: kept")]
    assert len(note) == 1 and f"{auc_t:.4f}" in note[0] and f"{auc_s:.4f}" in note[0]
    card = mlflow.artifacts.load_text(f"runs:/{res.run_id}/model_card.md")
    assert note[0] in card


def test_init_score_run_registers_a_model_carrying_the_classical_start(small_sim):
    """btyd.use init_score boosts LightGBM from the classical margin and registers the model
    with the latest anchor's BG/NBD fit as its starting margin, read from its own features:
    the registered model scores the logged holdout with the start added to its trees."""
    import mlflow

    from leadscore import classical, registry
    from leadscore.training.config import ExperimentConfig
    from leadscore.training.run import train

    res = train(small_sim, ExperimentConfig(model="churn", btyd={"use": "init_score",
                                                                 "refits": 2}))
    assert res.version is not None and res.alias is not None
    assert np.isfinite(res.metrics["roc_auc"]) and np.isfinite(res.metrics["btyd_roc_auc"])
    assert not any("not registered" in n for n in res.notes)
    m = registry.load_version("churn", res.version)
    fits = mlflow.artifacts.load_dict(f"runs:/{res.run_id}/btyd_fits.json")
    assert m.start is not None and m.start.kind == "bgnbd"
    assert m.start.params == pytest.approx({k: fits[-1][k] for k in ("r", "alpha", "a", "b")})
    inputs = classical.inputs_for(_engagement())
    assert list(m.start.features) == [inputs[r] for r in classical.ROLES]
    assert set(m.start.features) <= set(m.features)
    run = mlflow.get_run(res.run_id)
    assert float(run.data.params["btyd_start_r"]) == pytest.approx(m.start.params["r"])
    holdout = pd.read_parquet(mlflow.artifacts.download_artifacts(
        f"runs:/{res.run_id}/holdout.parquet"))
    x = m.matrix(holdout)
    trees = m.booster.predict(x, raw_score=True)
    np.testing.assert_allclose(m.raw(x), trees + m.start.margin_of(
        x[:, [m.index[f] for f in m.start.features]]), atol=1e-9)
    assert np.ptp(m.raw(x) - trees) > 0.1  # the start differs between rows


@pytest.mark.parametrize("use_start", [True, False])
def test_auto_registers_the_kept_fit(small_sim, monkeypatch, use_start):
    """Whichever fit auto keeps is the one evaluated, refit and registered: the start goes
    into the artifact only when it was chosen (the choice forced here both ways)."""
    import mlflow

    from leadscore import registry
    from leadscore.training.config import ExperimentConfig
    from leadscore.training.run import train

    real = btyd.choose_start
    seen = []

    def forced(held, trees, started, num_threads=1, seed=0):
        seen.append((trees.init, started.init, set(held["split"])))
        return replace(real(held, trees, started, num_threads, seed), use_start=use_start)

    monkeypatch.setattr(btyd, "choose_start", forced)
    res = train(small_sim, ExperimentConfig(model="churn", btyd={"refits": 2}))
    assert seen == [(None, "btyd_init", {"valid", "calib"})]
    m = registry.load_version("churn", res.version)
    assert (m.start is not None) is use_start
    run = mlflow.get_run(res.run_id)
    assert run.data.params["btyd_auto_choice"] == ("init_score" if use_start else "none")
    assert ("btyd_start_r" in run.data.params) is use_start
    assert any("boosted from the classical" in n for n in res.notes) is use_start
    # the registered model is the refit of the kept fit: it scores the logged holdout with
    # the start added to its trees exactly when it carries one
    holdout = pd.read_parquet(mlflow.artifacts.download_artifacts(
        f"runs:/{res.run_id}/holdout.parquet"))
    x = m.matrix(holdout)
    trees = m.booster.predict(x, raw_score=True)
    assert bool(np.ptp(m.raw(x) - trees) > 0.1) is use_start


def _engagement():
    from leadscore.models.churn import SPEC

    return SPEC.label.events


def test_feature_use_stays_an_experiment_and_pareto_cannot_start(small_sim):
    """btyd.use feature: serving does not compute the classical probability as a feature,
    so the run is evaluated and logged, never registered. A Pareto/NBD start would not be
    servable: refused when the config is read."""
    import mlflow
    from pydantic import ValidationError

    from leadscore.training.config import ExperimentConfig
    from leadscore.training.run import train

    res = train(small_sim, ExperimentConfig(model="churn", refit=False,
                                            btyd={"use": "feature", "refits": 1}))
    assert res.version is None and res.alias is None
    assert any("not registered" in n for n in res.notes)
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(res.run_id)}
    assert "btyd_fits.json" in arts and "model" not in arts
    with pytest.raises(ValueError, match="churn only"):
        ExperimentConfig(model="conversion", btyd={"use": "feature"})
    with pytest.raises(ValidationError, match="init_score needs model bgnbd"):
        ExperimentConfig(model="churn", btyd={"use": "init_score", "model": "pareto_nbd"})
