"""Training: labels, censoring, splits, the MLflow round trip, promotion and monotonicity."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from leadscore import contract, models, registry
from leadscore.models.spec import Gate, NoneWithin, Within
from leadscore.training import dataset
from leadscore.training.config import ExperimentConfig
from leadscore.training.promote import promote_best

T0 = pd.Timestamp("2026-03-01", tz="UTC")


def _tiny_con(events: list[tuple[str, str, pd.Timestamp]]):
    con = contract.connect()
    leads = pd.DataFrame({"lead_id": ["a", "b"], "dealer_id": ["D1", "D1"],
                          "created_at": [T0 - pd.Timedelta(days=20)] * 2,
                          "source": ["website", "douyin"]})
    ev = pd.DataFrame(events, columns=["lead_id", "event_type", "ts"])
    contract.register_frames(con, leads, ev)
    return con


def test_labels_look_only_after_the_cutoff_and_include_the_horizon_end():
    spec = replace(models.get("conversion"), label=Within(("order",), days=30))
    con = _tiny_con([
        ("a", "order", T0),  # at the cutoff itself: not in (t, t+30d]
        ("b", "order", T0 + pd.Timedelta(days=30)),  # exactly at the horizon end: counts
        ("a", "page_view", T0 + pd.Timedelta(days=100)),
    ])
    rows = pd.DataFrame({"lead_id": ["a", "b"], "as_of": [T0, T0]})
    lab = dataset.label_rows(con, rows, spec, data_end=T0 + pd.Timedelta(days=100))
    assert lab["label"].tolist() == [0, 1]
    assert not lab["censored"].any()


def test_label_window_excludes_just_after_horizon():
    spec = replace(models.get("contact"), label=Within(("price_inquiry",), days=3))
    con = _tiny_con([("a", "price_inquiry", T0 + pd.Timedelta(days=3, microseconds=1)),
                     ("b", "price_inquiry", T0 + pd.Timedelta(microseconds=1))])
    rows = pd.DataFrame({"lead_id": ["a", "b"], "as_of": [T0, T0]})
    lab = dataset.label_rows(con, rows, spec, data_end=T0 + pd.Timedelta(days=10))
    assert lab["label"].tolist() == [0, 1]


def test_right_censored_rows_are_flagged_not_negative():
    spec = replace(models.get("churn"), label=NoneWithin(("page_view",), days=30))
    con = _tiny_con([("a", "page_view", T0 + pd.Timedelta(days=5))])
    rows = pd.DataFrame({"lead_id": ["a", "b"], "as_of": [T0, T0]})
    lab = dataset.label_rows(con, rows, spec, data_end=T0 + pd.Timedelta(days=10))
    assert lab["censored"].all()  # the 30-day window is not observed yet


def test_training_set_excludes_censored_rows_and_purges_overlap(sim_data):
    ds = contract.load(sim_data)
    spec = models.get("conversion")
    start, end = dataset.data_bounds(ds.con)
    cutoffs = [*dataset.rolling_cutoffs(start, end, 7, 30), end - pd.Timedelta(days=3)]
    ts = dataset.build(ds.con, spec, as_of=cutoffs)  # auto: enough history for out-of-time
    assert ts.split_kind == "time"
    assert ts.n_censored > 0
    assert (ts.frame["as_of"] + pd.Timedelta(days=30) <= ts.data_end).all()
    first_test = ts.part("test")["as_of"].min()
    train_period = ts.frame[ts.frame["split"].isin(["fit", "valid", "calib"])]
    assert (train_period["as_of"] + pd.Timedelta(days=30) <= first_test).all()
    # a lead is in exactly one of fit/valid/calib
    parts = train_period.groupby("lead_id")["split"].nunique()
    assert (parts == 1).all()
    assert ts.frame["is_open"].all()


def test_auto_split_falls_back_to_entity_when_the_history_is_too_short(sim_data):
    ds = contract.load(sim_data)
    spec = models.get("conversion")
    start, end = dataset.data_bounds(ds.con)
    cutoffs = dataset.rolling_cutoffs(start, end, 7, 30)[:2]
    with pytest.raises(dataset.TooShortForTime, match="at least 3 usable cutoffs"):
        dataset.build(ds.con, spec, split="time", as_of=cutoffs)
    ts = dataset.build(ds.con, spec, as_of=cutoffs)
    assert ts.split_kind == "entity"
    assert "in-time metrics" in ts.notes[0] and "at least 3 usable cutoffs" in ts.notes[0]
    assert set(ts.frame["split"]) == {"fit", "valid", "calib", "test"}
    assert (ts.frame.groupby("lead_id")["split"].nunique() == 1).all()


def test_entity_split_keeps_each_lead_in_one_part(sim_data):
    ds = contract.load(sim_data)
    spec = models.get("contact")
    as_of = pd.Timestamp("2026-04-20", tz="UTC")
    ts = dataset.build(ds.con, spec, split="entity", as_of=[as_of])
    assert set(ts.frame["split"]) == {"fit", "valid", "calib", "test"}
    assert (ts.frame.groupby("lead_id")["split"].nunique() == 1).all()


def test_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match="learnin_rate"):
        ExperimentConfig.model_validate({"model": "conversion", "learnin_rate": 0.1})


def test_round_trip_train_register_load_predict(trained):
    res = trained["conversion"]
    assert res.version == "1" and res.alias == "champion"
    assert 0.5 < res.metrics["roc_auc"] <= 1.0
    assert "oracle_auc" in res.metrics  # simulator truth was found and used
    lm, resolved = registry.load("conversion")
    assert resolved.version == "1"
    feats = trained["features"]
    p = lm.predict_proba(feats)
    assert p.shape == (len(feats),) and np.all((p >= 0) & (p <= 1))
    # the pyfunc flavour data scientists use gives the same probabilities
    import mlflow.pyfunc

    pyf = mlflow.pyfunc.load_model("models:/leadscore-conversion@champion")
    got = pyf.predict(registry.signature_frame(lm, feats.head(20)))["probability"].to_numpy()
    np.testing.assert_allclose(got, p[:20], rtol=1e-9)


def test_run_logs_artifacts_signature_and_card(trained):
    from mlflow import MlflowClient
    from mlflow.models import get_model_info

    run_id = trained["conversion"].run_id
    names = {a.path for a in MlflowClient().list_artifacts(run_id)}
    for must in ("model_card.md", "calibration_curve.png", "gains_chart.png",
                 "feature_importance.png", "shap_summary.png", "features.json",
                 "config.json", "holdout.parquet", "metrics_by_dealer.csv"):
        assert must in names
    run = MlflowClient().get_run(run_id)
    assert run.data.tags["data_fingerprint"]
    assert "roc_auc" in run.data.metrics and "ece" in run.data.metrics
    info = get_model_info("models:/leadscore-conversion@champion")
    assert info.signature is not None
    inputs = {c.name for c in info.signature.inputs.inputs}
    assert "finance_calc_7d" in inputs and "source" in inputs


def test_registered_model_is_refit_on_all_labels_and_metrics_stay_the_evaluations(trained):
    """The run's metrics are the evaluation fit's on a holdout it never saw (its predictions
    are logged beside the holdout); the registered model is boosted on more rows, the holdout
    included, with the same number of trees."""
    import mlflow
    from mlflow import MlflowClient
    from sklearn.metrics import roc_auc_score

    from leadscore.training.promote import _holdout

    res = trained["conversion"]
    run = MlflowClient().get_run(res.run_id)
    params = run.data.params
    assert params["refit"] == "True"
    assert int(params["n_refit"]) > int(params["n_fit"]) + int(params["n_test"]) // 2
    holdout = _holdout(res.run_id)
    assert roc_auc_score(holdout["label"], holdout["p_eval"]) == pytest.approx(
        run.data.metrics["roc_auc"], abs=1e-9)
    lm, _ = registry.load("conversion")
    assert lm.booster.num_trees() == int(params["best_iteration"])
    assert not np.allclose(lm.predict_proba(holdout), holdout["p_eval"])
    card = mlflow.artifacts.load_text(f"runs:/{res.run_id}/model_card.md")
    assert "refit with the same settings" in card


def test_json_line_has_run_version_and_metrics(trained):
    line = json.loads(trained["conversion"].as_json())
    assert line["run_id"] and line["registered_version"] == "1"
    assert "roc_auc" in line["metrics"]


def test_more_finance_use_never_lowers_the_lead_score(trained):
    lm, _ = registry.load("conversion")
    base = trained["features"].head(200).copy()
    p0 = lm.predict_proba(base)
    for col in ("finance_calc_7d", "finance_calc_30d", "config_view_7d"):
        more = base.copy()
        more[col] = more[col] + 5
        assert np.all(lm.predict_proba(more) >= p0 - 1e-12), col


def test_promotion_gate_refuses_a_worse_challenger_and_takes_a_better_one(
        trained, sim_data):
    from leadscore.training.run import train

    weak = ExperimentConfig(
        model="conversion", run_name="weak",
        exclude_features=[f for f in models.get("conversion").features
                          if f not in ("budget", "lead_age_days")],
    )
    res = train(sim_data, weak)
    assert res.alias == "challenger"
    d = promote_best("conversion")
    assert not d.promoted and "champion kept" in d.reason
    assert registry.resolve("conversion").version == "1"
    # the other way round: a weak champion loses to the full model
    registry.set_alias("conversion", "champion", res.version)
    registry.set_alias("conversion", "challenger", "1")
    d = promote_best("conversion")
    assert d.promoted, d.reason
    assert registry.resolve("conversion").version == "1"


def test_gate_arithmetic():
    g = Gate("roc_auc", min_gain=0.002)
    assert g.passes(0.803, 0.800) and not g.passes(0.8015, 0.800)
    lo = Gate("log_loss", min_gain=0.001, lower_is_better=True)
    assert lo.passes(0.300, 0.302) and not lo.passes(0.302, 0.300)


def test_refit_boosts_the_given_trees_on_every_labelled_row_and_calibrates_apart():
    from dataclasses import replace

    from leadscore.training.trainer import REFIT_CALIB_SHARE, refit

    rng = np.random.default_rng(0)
    n = 4000
    frame = pd.DataFrame({
        "lead_id": [f"L{i}" for i in range(n)],
        "as_of": pd.Timestamp("2026-01-05", tz="UTC"),
        "events_7d": rng.poisson(3, n).astype(float),
        "lead_age_days": rng.uniform(0, 60, n),
        "split": rng.choice(["fit", "valid", "calib", "test", "purged"], n),
    })
    frame["label"] = (rng.random(n) < 0.05 + 0.1 * (frame["events_7d"] > 3)).astype("int8")
    spec = replace(models.get("conversion"), features=("events_7d", "lead_age_days"),
                   monotone={})
    ts = dataset.TrainingSet(frame=frame, cutoffs=[], data_end=pd.Timestamp("2026-03-01"),
                             n_censored=0, split_kind="time")
    model, rows = refit(spec, ts, trees=7)
    assert model.booster.num_trees() == 7
    calib = dataset.lead_share(frame["lead_id"], 1) < REFIT_CALIB_SHARE
    assert rows == int((~calib).sum())  # every part, the purged rows too, but the calib tenth
    # calibrated on the kept tenth: Platt scaling, rising with the margin
    assert model.calibrator.method == "sigmoid" and model.calibrator.a > 0
    # a calibration tenth with one class cannot calibrate: a clear error (train() then
    # registers the evaluation fit instead)
    frame.loc[calib, "label"] = 0
    with pytest.raises(ValueError, match="refit calibration part"):
        refit(spec, ts, trees=7)


def test_null_sources_and_pre_lead_contacts_train_the_slot_model_and_its_policy(tmp_path):
    """Leads without a source and contacts logged before the lead's ``created_at`` (the call
    came first) are valid input: validation keeps every row, the pre-lead attempts are
    history that later attempts count but no training rows themselves, and the logging
    policy fits on missing categories instead of sorting them among the strings."""
    from leadscore import simulate as sim
    from leadscore.training.policy_eval import LoggingPolicy, action_id

    d = sim.simulate(sim.SimConfig(n_leads=150, days=40, seed=3))
    leads, contacts = d.leads.copy(), d.contacts.copy()
    leads.loc[leads.index[:20], "source"] = None
    first = contacts.groupby("lead_id")["ts"].idxmin().to_numpy()[:15]
    created = leads.set_index("lead_id")["created_at"]
    contacts.loc[first, "ts"] = (created.loc[contacts.loc[first, "lead_id"]].to_numpy()
                                 - pd.Timedelta(hours=3))
    leads.to_parquet(tmp_path / "leads.parquet")
    d.events.to_parquet(tmp_path / "events.parquet")
    contacts.to_parquet(tmp_path / "contacts.parquet")

    ds = contract.load(tmp_path, quarantine_dir=tmp_path / "q")
    rep = ds.reports["contacts"]
    assert rep.rows_ok == rep.rows_read == len(contacts) and not rep.quarantined
    ts = dataset.build(ds.con, models.get("contact-slot"), split="entity")
    assert len(ts.frame) == len(contacts) - len(first)
    assert any(f"{len(first)} contact attempts before" in n for n in ts.notes)
    assert ts.frame["dealer_id"].notna().all() and ts.frame["source"].isna().any()
    # a moved lead's later attempts count its pre-lead one
    moved = set(contacts.loc[first, "lead_id"])
    later = ts.frame[ts.frame["lead_id"].isin(moved)]
    assert len(later)
    before = [int((contacts["lead_id"].eq(r.lead_id) & (contacts["ts"] < r.as_of)).sum())
              for r in later.itertuples()]
    assert later["contact_attempts"].tolist() == before
    assert (later["uncontacted_hours"] == 0).all()  # called before its record: no wait
    from leadscore.features import job
    end = pd.Timestamp(contacts["ts"].max()).ceil("D")
    at_end = job.to_pandas(job.compute(ds.con, [end])).set_index("lead_id").loc[sorted(moved)]
    assert (at_end["uncontacted_hours"] == 0).all()  # the batch's computation too

    pol = LoggingPolicy.fit(ts.frame)
    assert pol.booster is not None and "source" in pol.inputs
    assert all(isinstance(c, str) for c in pol.categories["source"])
    a = action_id(ts.frame["channel"].astype(str), ts.frame["slot_hour"])
    p = pol.propensity(ts.frame, a)
    assert len(p) == len(ts.frame) and np.isfinite(p).all() and (p > 0).all()
