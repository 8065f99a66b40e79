"""Churn's classical starting score as a served model: the BG/NBD inputs from catalog features
(leadscore.classical), the artifact that carries the fit, and the same p_churn in HTTP and
batch scoring."""

from __future__ import annotations

import json

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from leadscore import classical, contract
from leadscore.artifact import META_FILE, Calibrator, LeadModel
from leadscore.features import catalog as cat
from leadscore.features import job
from leadscore.scoring.scorer import Scorer
from leadscore.training import btyd

T = pd.Timestamp("2025-03-01", tz="UTC")
D = pd.Timedelta(days=1)
PARAMS = {"r": 0.7, "alpha": 15.0, "a": 0.9, "b": 2.2}
ORDERS = classical.inputs_for(("order",))


def _contract(con, events: list[tuple[str, pd.Timestamp]], leads: dict[str, pd.Timestamp]):
    lf = pd.DataFrame({"lead_id": list(leads), "dealer_id": "D1",
                       "created_at": pd.to_datetime(list(leads.values()), utc=True),
                       "source": "website", "intended_model": None, "city": None,
                       "budget": np.nan, "tz": "UTC"})
    lf = lf[[c.name for c in contract.TABLES["leads"]]]
    lf["created_at"] = lf["created_at"].astype("datetime64[us, UTC]")
    ef = pd.DataFrame({"lead_id": [e[0] for e in events],
                       "ts": pd.to_datetime([e[1] for e in events], utc=True),
                       "event_type": "order", "model": None, "value": np.nan,
                       "ingested_at": pd.NaT})
    ef = ef[[c.name for c in contract.TABLES["events"]]]
    ef["ts"] = ef["ts"].astype("datetime64[us, UTC]")
    ef["ingested_at"] = ef["ts"]
    cf = pd.DataFrame(columns=[c.name for c in contract.TABLES["contacts"]])
    cf["ts"] = pd.to_datetime(cf["ts"], utc=True).astype("datetime64[us, UTC]")
    contract.register_frames(con, lf, ef, cf)


def _both(con, cut=T) -> tuple[pd.DataFrame, pd.DataFrame]:
    feats = job.to_pandas(job.compute(con, [cut], cat.CATALOG), cat.CATALOG)
    feats = feats.sort_values("lead_id").reset_index(drop=True)
    sql = btyd.summaries(con, feats[["lead_id", "as_of"]], ["order"])
    return btyd.feature_summaries(feats, ORDERS), sql


def test_inputs_are_the_engagement_groups_whole_history_features():
    assert classical.inputs_for(("order",)) == {
        "active_days": "orders_active_days", "since_last": "orders_days_since_last",
        "typical_gap": "orders_typical_gap_days", "age": "lead_age_days"}
    from leadscore.schema import INBOUND_TYPES

    assert classical.inputs_for(tuple(reversed(INBOUND_TYPES)))["active_days"] == \
        "inbound_active_days"
    assert classical.inputs_for(("order", "service_visit")) is None


def test_feature_summaries_equal_the_sql_summaries_on_midnight_purchases(con):
    """Purchases at midnight UTC: the day floors of btyd.summaries are the times themselves,
    so the two definitions coincide (several purchases on one day are one, no purchase is
    born at the lead's creation)."""
    _contract(con, [("a", T - 30 * D), ("a", T - 30 * D), ("a", T - 20 * D),
                    ("a", T - 10 * D), ("b", T - 5 * D), ("a", T + D)],
              {"a": T - 40 * D, "b": T - 9 * D, "c": T - 12 * D})
    ours, sql = _both(con)
    assert ours["lead_id"].tolist() == ["a", "b", "c"]
    np.testing.assert_array_equal(ours["frequency"], sql["frequency"])
    np.testing.assert_allclose(ours["recency"], sql["recency"], rtol=1e-12)
    np.testing.assert_allclose(ours["T"], sql["T"], rtol=1e-12)
    np.testing.assert_allclose(ours[["frequency", "recency", "T"]].to_numpy(),
                               [[2, 20, 30], [0, 0, 5], [0, 0, 12]])


def test_feature_summaries_use_exact_times_not_day_floors(con):
    """Off midnight, frequency still counts UTC days; recency and T are exact times (within
    a day of the floors), and one purchase day counts T from its last purchase."""
    _contract(con, [("a", T - 30 * D + pd.Timedelta(hours=8)),
                    ("a", T - 30 * D + pd.Timedelta(hours=20)),
                    ("a", T - 10 * D + pd.Timedelta(hours=9)),
                    ("b", T - 5 * D + pd.Timedelta(hours=6)),
                    ("b", T - 5 * D + pd.Timedelta(hours=18))],
              {"a": T - 40 * D, "b": T - 9 * D})
    ours, sql = _both(con)
    np.testing.assert_array_equal(ours["frequency"], sql["frequency"])
    assert ours["recency"].tolist() == pytest.approx([20 + 1 / 24, 0.0])
    assert ours["T"].tolist() == pytest.approx([30 - 8 / 24, 5 - 18 / 24])
    assert (np.abs(ours[["recency", "T"]].to_numpy() - sql[["recency", "T"]].to_numpy())
            < 1).all()


# --------------------------------------------------------------------------- the artifact

INPUTS = classical.inputs_for(None)  # the "events" group: any type


def _start() -> classical.Start:
    return classical.Start("bgnbd", PARAMS, 30.0, tuple(INPUTS[r] for r in classical.ROLES))


def _rows(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    days = rng.integers(0, 12, n).astype(float)
    gap = np.where(days > 1, rng.exponential(20, n), np.nan)
    last = np.where(days > 0, rng.exponential(30, n), np.nan)
    return pd.DataFrame({
        INPUTS["active_days"]: days, INPUTS["since_last"]: last,
        INPUTS["typical_gap"]: gap, INPUTS["age"]: rng.uniform(1, 400, n),
        "budget": np.where(rng.random(n) < 0.2, np.nan, rng.normal(3e5, 5e4, n)),
        "source": pd.Categorical(rng.choice(["web", "walk_in", "phone"], n),
                                 categories=["phone", "walk_in", "web"]),
    })


def _reference_start(df: pd.DataFrame) -> np.ndarray:
    """The starting margin computed the training way (btyd's fit on feature summaries)."""
    s = btyd.feature_summaries(df.assign(lead_id="x", as_of=T), INPUTS)
    f = btyd.Fitted("bgnbd", PARAMS, 0)
    return classical.churn_margin(1.0 - f.p_purchase(s, 30.0))


@pytest.fixture(scope="module")
def started(tmp_path_factory) -> tuple[LeadModel, pd.DataFrame]:
    """A churn-like model boosted from the classical margin, saved with its start."""
    df = _rows(3000, 1)
    init = _reference_start(df)
    rng = np.random.default_rng(2)
    y = rng.random(len(df)) < 1 / (1 + np.exp(-(init + 0.8 * (df["source"] == "web")
                                                 - 0.3 * df["budget"].fillna(3e5) / 1e5)))
    booster = lgb.train({"objective": "binary", "num_leaves": 15, "max_depth": 6,
                         "verbosity": -1, "seed": 1, "num_threads": 1},
                        lgb.Dataset(df, y.astype(int), init_score=init), num_boost_round=30)
    model = LeadModel("churn", booster=booster, features=list(df.columns),
                      categories={"source": ["phone", "walk_in", "web"]},
                      calibrator=Calibrator("sigmoid", a=0.9, b=0.1), start=_start())
    d = model.save(tmp_path_factory.mktemp("started"))
    test = _rows(400, 7)
    test.loc[:9, list(INPUTS.values())] = np.nan  # nothing known: a finite start still
    return d, test


@pytest.mark.parametrize("accelerate", [False, True], ids=["lightgbm", "accelerated"])
def test_saved_start_adds_to_the_trees_on_either_path(started, accelerate):
    d, test = started
    m = LeadModel.load(d, accelerate=accelerate)
    assert m.start == _start()
    assert m.scoring_path == ("accelerated" if accelerate else "lightgbm: accelerators off")
    x = m.matrix(test)
    ref = m.booster.predict(m.frame(test), raw_score=True) + _reference_start(test)
    raw = m.raw(test)
    assert np.isfinite(raw).all()
    np.testing.assert_allclose(raw, ref, rtol=0, atol=1e-9)
    np.testing.assert_allclose(m.raw(x), ref, rtol=0, atol=1e-9)
    c = m.contributions(x)
    np.testing.assert_allclose(c.sum(axis=1), raw, rtol=0, atol=1e-9)
    # the features' columns are the trees' own; the start is in the base column
    trees = m.booster.predict(x, pred_contrib=True)
    np.testing.assert_allclose(c[:, :-1], trees[:, :-1], rtol=0, atol=1e-9)
    np.testing.assert_allclose(c[:, -1] - trees[:, -1], _reference_start(test), atol=1e-9)
    np.testing.assert_allclose(m.predict_proba(x), m.calibrator(ref), atol=1e-12)


def test_candidate_runs_add_the_start_of_each_candidate(started):
    """predict_proba_runs (the slot search's) with varied columns that the start reads."""
    d, test = started
    m = LeadModel.load(d, accelerate=False)
    x = m.matrix(test)
    vcols = np.array([m.index[INPUTS["since_last"]], m.index["budget"]])
    lead, group = x[:3], 5
    vals = np.stack([x[10 + 5 * i: 15 + 5 * i][:, vcols] for i in range(3)])
    laid = np.repeat(lead, group, axis=0)
    laid[:, vcols] = vals.reshape(3 * group, -1)
    np.testing.assert_allclose(m.predict_proba_runs(lead, vals, vcols),
                               m.predict_proba(laid).reshape(3, group), atol=1e-12)


def test_artifacts_without_a_start_load_as_before_and_odd_starts_are_refused(started,
                                                                            tmp_path):
    d, _ = started
    meta = json.loads((d / META_FILE).read_text())
    assert meta["start"]["version"] == classical.START_VERSION
    old = tmp_path / "old"
    old.mkdir()
    (old / "model.txt").write_text((d / "model.txt").read_text())
    (old / META_FILE).write_text(json.dumps({k: v for k, v in meta.items() if k != "start"}))
    m = LeadModel.load(old, accelerate=False)
    assert m.start is None
    np.testing.assert_allclose(m.raw(_rows(5, 3)),
                               m.booster.predict(m.frame(_rows(5, 3)), raw_score=True))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.txt").write_text((d / "model.txt").read_text())
    wrong = {**meta["start"], "features": ["budget", "nope", "x", "y"]}
    (bad / META_FILE).write_text(json.dumps({**meta, "start": wrong}))
    with pytest.raises(ValueError, match="nope"):
        LeadModel.load(bad, accelerate=False)
    (bad / META_FILE).write_text(json.dumps({**meta, "start": {**meta["start"],
                                                               "version": 99}}))
    with pytest.raises(ValueError, match="format 99"):
        LeadModel.load(bad, accelerate=False)
    with pytest.raises(ValueError, match="pareto_nbd"):
        classical.Start("pareto_nbd", {}, 30.0, tuple(INPUTS.values()))


def test_http_and_batch_give_the_same_p_churn(started):
    d, test = started
    m = LeadModel.load(d)
    feats = test.assign(lead_id=[f"L{i}" for i in range(len(test))], dealer_id="D1",
                        as_of=T)
    scorer = Scorer({"churn": m})
    batch = scorer.score(feats, reasons=2)
    records = [{k: (None if isinstance(v, float) and np.isnan(v) else v)
                for k, v in r.items()}
               for r in feats.assign(source=feats["source"].astype(object)).to_dict("records")]
    http = scorer.score_records(records, reasons=2, slots=0)
    p_http = np.array([r["p_churn"] for r in http])
    np.testing.assert_allclose(batch["p_churn"].to_numpy(dtype=float), p_http, atol=1e-12)
    np.testing.assert_allclose(p_http, m.calibrator(
        m.booster.predict(m.frame(test), raw_score=True) + _reference_start(test)), atol=1e-9)
    # reasons name the trees' features, never the start
    named = {r["feature"] for rs in http for r in rs["reasons"]}
    assert named and named <= set(m.features)


def test_init_score_refuses_what_serving_could_not_compute():
    """A start needs its inputs among the model's features: engagement events without a
    whole-history group, or an excluded input, stop the run with a clear error."""
    from leadscore.training.config import ExperimentConfig
    from leadscore.training.run import _btyd_input, _Classical, resolve_spec

    cfg = ExperimentConfig(model="churn", btyd={"use": "init_score"},
                           engagement_events=["service_visit", "wechat_reply"])
    with pytest.raises(ValueError, match="no whole-history feature group"):
        _btyd_input(resolve_spec(cfg), cfg, None, _Classical(fits=[], inputs=None))
    cfg = ExperimentConfig(model="churn", btyd={"use": "init_score"},
                           exclude_features=["inbound_typical_gap_days"])
    inputs = classical.inputs_for(resolve_spec(cfg).label.events)
    with pytest.raises(ValueError, match="inbound_typical_gap_days"):
        _btyd_input(resolve_spec(cfg), cfg, None, _Classical(fits=[], inputs=inputs))


def test_spark_workers_rebuild_the_model_with_its_start(started, monkeypatch):
    """The broadcast to Spark workers is the artifact's own serialisation: a worker's churn
    scores equal the driver's (a copy that dropped the start scored the trees alone)."""
    from types import SimpleNamespace

    from leadscore.nightly import spark

    d, test = started
    m = LeadModel.load(d, accelerate=False)
    key, blob = spark._payload(Scorer({"churn": m}))
    monkeypatch.setattr(spark, "_worker_scorer", None)
    worker = spark._scorer_on_worker(key, SimpleNamespace(value=blob)).models["churn"]
    assert worker.start == m.start
    np.testing.assert_allclose(worker.raw(test), m.raw(test), rtol=0, atol=0)
