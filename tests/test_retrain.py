"""Guarded retraining: the per-dealer gate, the champion history, rollback and `retrain`.

Fast: the gate is judged on synthetic holdouts with made-up predictions, and the registry
parts use versions whose runs log only a holdout (with ``p_eval``, which promotion compares
when both runs hold the same rows), so nothing is trained.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import private_env
from typer.testing import CliRunner

from leadscore import cli, registry
from leadscore.models.spec import DealerGate, Gate
from leadscore.training import promote
from leadscore.training.run import RunResult

WORSE = "D07"


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def holdout_and_scores(worse_positives: int = 60, seed: int = 0):
    """Five dealers of 600 rows: the challenger separates four of them much better than the
    champion and dealer D07 clearly worse (with ``worse_positives`` positives there)."""
    rng = np.random.default_rng(seed)
    frames, p_champ, p_chall = [], [], []
    for dealer in ("D01", "D02", "D03", "D04", WORSE):
        n = 600
        pos = worse_positives if dealer == WORSE else 60
        y = np.zeros(n, dtype="int8")
        y[:pos] = 1
        noise = rng.normal(size=n)
        frames.append(pd.DataFrame({
            "lead_id": [f"{dealer}-L{i}" for i in range(n)],
            "dealer_id": dealer,
            "as_of": pd.Timestamp("2026-03-02", tz="UTC"),
            "label": y,
        }))
        p_champ.append(_sigmoid(1.2 * y + noise - 2))
        p_chall.append(_sigmoid((0.6 if dealer == WORSE else 2.0) * y + noise - 2))
    return (pd.concat(frames, ignore_index=True), np.concatenate(p_champ),
            np.concatenate(p_chall))


def test_a_challenger_better_overall_but_worse_for_one_big_dealer_is_not_promoted():
    holdout, a, b = holdout_and_scores()
    d = promote.judge(holdout, a, b, Gate(), DealerGate(min_positives=30, tolerance=0.02),
                      "1", "2")
    assert d.challenger_value > d.champion_value + 0.002  # better overall
    (row,) = d.blocked_by
    assert row["dealer_id"] == WORSE and row["positives"] == 60
    assert row["change"] < -0.05  # the premise: clearly worse for that dealer
    assert not d.promoted and d.champion_version == "1"
    assert "champion kept" in d.reason
    assert (f"dealer {WORSE}: AUC {row['challenger_auc']:.3f} vs champion "
            f"{row['champion_auc']:.3f} ({row['change']:+.3f}, 60 positives)") in d.reason
    assert {r["status"] for r in d.dealers if r["dealer_id"] != WORSE} == {"ok"}
    # a looser tolerance lets the same challenger through
    loose = promote.judge(holdout, a, b, Gate(), DealerGate(30, tolerance=0.5), "1", "2")
    assert loose.promoted and not loose.blocked_by


def test_the_same_dealer_with_too_few_positives_is_not_judged():
    holdout, a, b = holdout_and_scores(worse_positives=12)
    d = promote.judge(holdout, a, b, Gate(), DealerGate(min_positives=30), "1", "2")
    assert d.promoted, d.reason
    assert d.challenger_version == "2"
    row = next(r for r in d.dealers if r["dealer_id"] == WORSE)
    assert row["status"] == "not judged" and row["positives"] == 12
    assert f"not judged: {WORSE} (12 positives)" in d.reason


def test_a_dealer_with_one_class_is_not_judged():
    holdout, a, b = holdout_and_scores(worse_positives=0)
    d = promote.judge(holdout, a, b, Gate(), DealerGate(min_positives=0 + 1), "1", "2")
    row = next(r for r in d.dealers if r["dealer_id"] == WORSE)
    assert row["status"] == "not judged" and row["champion_auc"] is None
    assert d.promoted


def test_dealer_gate_defaults_live_in_the_spec_and_are_checked():
    from leadscore import models

    assert models.get("conversion").dealer_gate == DealerGate()
    with pytest.raises(ValueError):
        DealerGate(min_positives=0)
    with pytest.raises(ValueError):
        DealerGate(tolerance=-0.1)


# -- the registry: versions whose runs hold only a holdout -------------------------------------
@pytest.fixture
def store(tmp_path):
    mp = private_env(tmp_path)
    registry.configure()
    yield tmp_path
    mp.undo()


def register(model: str, holdout: pd.DataFrame, p: np.ndarray) -> tuple[str, str]:
    """A run that logs ``holdout.parquet`` with ``p`` as its evaluation predictions, and a
    registered version of it (no model files: promotion reads the logged predictions)."""
    import mlflow

    c = registry.client()
    mlflow.set_experiment(f"test-{model}")
    with mlflow.start_run() as run, tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "holdout.parquet"
        holdout.assign(p_eval=p).to_parquet(path)
        mlflow.log_artifact(str(path))
    name = registry.registered_name(model)
    if not c.search_registered_models(f"name='{name}'"):
        c.create_registered_model(name)
    mv = c.create_model_version(name, source=f"runs:/{run.info.run_id}/model",
                                run_id=run.info.run_id)
    return str(mv.version), run.info.run_id


def test_gate_keeps_the_champion_and_says_why_in_mlflow(store):
    holdout, a, b = holdout_and_scores()
    v1, _ = register("conversion", holdout, a)
    registry.make_champion("conversion", v1, "first")
    v2, run2 = register("conversion", holdout, b)
    registry.set_alias("conversion", registry.CHALLENGER, v2)
    d = promote.promote_best("conversion")
    assert not d.promoted and [r["dealer_id"] for r in d.blocked_by] == [WORSE]
    assert registry.resolve("conversion").version == v1
    run = registry.client().get_run(run2)
    assert run.data.tags["promotion.decision"] == "kept"
    assert run.data.tags["promotion.blocked_by"] == WORSE
    assert f"dealer {WORSE}" in run.data.tags["promotion.reason"]
    import mlflow

    got = mlflow.artifacts.load_dict(f"runs:/{run2}/{promote.DECISION_FILE}")
    assert got["decision"] == "kept" and got["blocked_by"] == [WORSE]
    assert len(got["dealers"]) == 5
    # the overrides: a tolerance that lets it through promotes, and the history says so
    d = promote.promote_best("conversion", tolerance=0.5)
    assert d.promoted and registry.resolve("conversion").version == v2
    hist = registry.champion_history("conversion")
    assert [h["version"] for h in hist] == [v1, v2]
    assert hist[0]["until"] == hist[1]["from"] and hist[1]["until"] is None
    assert hist[1]["reason"].startswith("gate: roc_auc")


def test_rollback_restores_the_previous_champion_and_records_it(store):
    holdout, a, b = holdout_and_scores(worse_positives=12)
    v1, _ = register("churn", holdout, a)
    registry.make_champion("churn", v1, "first")
    v2, _ = register("churn", holdout, b)
    registry.set_alias("churn", registry.CHALLENGER, v2)
    assert promote.promote_best("churn").promoted
    name = registry.registered_name("churn")
    c = registry.client()
    assert registry.FROM_TAG in c.get_model_version(name, v2).tags
    assert registry.UNTIL_TAG in c.get_model_version(name, v1).tags

    r = CliRunner().invoke(cli.app, ["promote", "--model", "churn", "--rollback"])
    assert r.exit_code == 0, r.output
    assert f"version {v1} champion again (was {v2})" in r.output
    assert registry.resolve("churn").version == v1
    tags1, tags2 = (c.get_model_version(name, v).tags for v in (v1, v2))
    assert registry.UNTIL_TAG not in tags1  # champion again: its term is open
    assert tags2[registry.UNTIL_TAG] >= tags2[registry.FROM_TAG]
    hist = registry.champion_history("churn")
    assert [h["version"] for h in hist] == [v1, v2, v1]
    assert hist[1].get("rolled_back") and "rollback" in hist[2]["reason"]
    # nothing before v1 but the rolled-back v2: a second rollback has nowhere to go
    r = CliRunner().invoke(cli.app, ["promote", "--model", "churn", "--rollback"])
    assert r.exit_code == 2 and "no earlier champion" in r.output
    assert registry.resolve("churn").version == v1


def test_rollback_goes_back_past_a_rolled_back_champion(store):
    holdout, a, _ = holdout_and_scores()
    vs = [register("contact", holdout, a)[0] for _ in range(3)]
    for v in vs:
        promote.promote_version("contact", v)
    assert promote.rollback("contact").champion_version == vs[1]
    assert promote.rollback("contact").champion_version == vs[0]
    assert "set as champion by hand" in registry.champion_history("contact")[0]["reason"]


def test_rollback_without_history_and_promote_of_unknown_version_exit_2(store):
    r = CliRunner().invoke(cli.app, ["promote", "--model", "contact", "--rollback"])
    assert r.exit_code == 2 and "no earlier champion" in r.output
    holdout, a, _ = holdout_and_scores()
    v1, _ = register("contact", holdout, a)
    registry.make_champion("contact", v1, "first")
    r = CliRunner().invoke(cli.app, ["promote", "--model", "contact", "--rollback"])
    assert r.exit_code == 2  # one champion only
    r = CliRunner().invoke(cli.app, ["promote", "--model", "contact", "--version", "9"])
    assert r.exit_code == 2 and "no version 9" in r.output
    r = CliRunner().invoke(cli.app, ["promote", "--model", "contact", "--rollback", "--best"])
    assert r.exit_code == 2


def test_an_alias_moved_outside_leadscore_joins_the_history(store):
    holdout, a, _ = holdout_and_scores()
    v1, _ = register("contact", holdout, a)
    v2, _ = register("contact", holdout, a)
    registry.make_champion("contact", v1, "first")
    registry.set_alias("contact", registry.CHAMPION, v2)  # by hand in the MLflow UI
    assert promote.rollback("contact").champion_version == v1
    assert [h["version"] for h in registry.champion_history("contact")] == [v1, v2, v1]


# -- `leadscore retrain`: its loop, with a stand-in for training ------------------------------
def fake_train(scores: dict):
    """A stand-in for training: registers a version whose run's holdout predictions are the
    next of ``scores[model]``, with the aliases training sets."""
    def train(data, cfg, rules=None):
        holdout, p = scores[cfg.model].pop(0)
        version, run_id = register(cfg.model, holdout, p)
        if registry.resolve(cfg.model) is None:
            registry.make_champion(cfg.model, version, "first registered version")
            alias = registry.CHAMPION
        else:
            registry.set_alias(cfg.model, registry.CHALLENGER, version)
            alias = registry.CHALLENGER
        return RunResult(model=cfg.model, run_id=run_id, version=version, alias=alias,
                         metrics={})
    return train


def test_retrain_promotes_only_through_both_gates_and_logs_why(store, monkeypatch, caplog):
    import leadscore.training.run as run_mod

    holdout, a, b = holdout_and_scores()
    small, a_small, b_small = holdout_and_scores(worse_positives=12)
    monkeypatch.setattr(run_mod, "train", fake_train({
        "conversion": [(holdout, a), (holdout, b)],
        "churn": [(small, a_small), (small, b_small)],
    }))
    data = store / "data"
    data.mkdir()
    args = ["retrain", "--data", str(data), "--models", "conversion,churn"]
    r = CliRunner().invoke(cli.app, args)
    assert r.exit_code == 0, r.output
    assert "conversion: promoted: version 1 is the first" in r.output
    with caplog.at_level(logging.INFO, logger="leadscore.retrain"):
        r = CliRunner().invoke(cli.app, args)
    assert r.exit_code == 0, r.output
    assert registry.resolve("conversion").version == "1"  # worse for D07: kept
    assert registry.resolve("churn").version == "2"  # D07 too small to judge: promoted
    kept = [rec for rec in caplog.records if rec.message.startswith("conversion: kept")]
    assert len(kept) == 1 and kept[0].levelno == logging.WARNING
    assert f"dealer {WORSE}: AUC" in kept[0].message and "60 positives" in kept[0].message
    assert any(rec.message.startswith("churn: promoted") for rec in caplog.records)
    run = registry.client().get_run(registry.resolve("conversion", registry.CHALLENGER).run_id)
    assert run.data.tags["promotion.decision"] == "kept"
    # the dealer gate's options reach promotion: a loose tolerance promotes
    monkeypatch.setattr(run_mod, "train", fake_train({"conversion": [(holdout, b)]}))
    r = CliRunner().invoke(cli.app, [*args[:4], "conversion", "--tolerance", "0.5"])
    assert r.exit_code == 0 and "conversion: promoted" in r.output, r.output


def test_retrain_bad_input_exits_2(store, monkeypatch):
    import leadscore.training.run as run_mod
    from leadscore.contract import ContractError

    r = CliRunner().invoke(cli.app, ["retrain", "--data", str(store / "missing")])
    assert r.exit_code == 2 and "no such folder" in r.output
    r = CliRunner().invoke(cli.app, ["retrain", "--data", str(store), "--models", "nope"])
    assert r.exit_code == 2 and "unknown nope" in r.output

    def broken(data, cfg, rules=None):
        raise ContractError("leads.csv: column created_at missing")

    monkeypatch.setattr(run_mod, "train", broken)
    r = CliRunner().invoke(cli.app, ["retrain", "--data", str(store), "--models", "churn"])
    assert r.exit_code == 2 and "leads.csv: column created_at missing" in r.output


def test_decision_json_is_plain_data():
    holdout, a, b = holdout_and_scores()
    d = promote.judge(holdout, a, b, Gate(), DealerGate(), "1", "2")
    back = json.loads(json.dumps(d.as_dict()))
    assert back["blocked_by"] == [WORSE] and back["decision"] == "kept"


def test_retrain_end_to_end_on_a_small_simulated_group(tmp_path):
    """The real path: simulate, retrain (the first version becomes champion), retrain again
    on the same data (same settings and seed: no gain, so the champion stays), and the
    challenger's run holds the per-dealer table."""
    import mlflow

    from leadscore import simulate as sim

    mp = private_env(tmp_path)
    try:
        sim.write(sim.simulate(sim.SimConfig(n_leads=700, days=120, seed=21)), tmp_path / "d")
        args = ["retrain", "--data", str(tmp_path / "d"), "--models", "conversion"]
        r = CliRunner().invoke(cli.app, args)
        assert r.exit_code == 0, r.output
        assert registry.resolve("conversion").version == "1"
        r = CliRunner().invoke(cli.app, args)
        assert r.exit_code == 0, r.output
        assert "conversion: kept: challenger v2" in r.output
        assert registry.resolve("conversion").version == "1"
        run_id = registry.resolve("conversion", registry.CHALLENGER).run_id
        got = mlflow.artifacts.load_dict(f"runs:/{run_id}/{promote.DECISION_FILE}")
        assert got["decision"] == "kept" and got["dealers"]
        assert {d["dealer_id"] for d in got["dealers"]} == set(
            pd.read_parquet(tmp_path / "d" / "leads.parquet")["dealer_id"])
        assert [h["version"] for h in registry.champion_history("conversion")] == ["1"]
    finally:
        mp.undo()
