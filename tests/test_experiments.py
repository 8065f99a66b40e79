"""Every experiment config in experiments/ parses and applies to its spec."""

from pathlib import Path

import pytest

from leadscore.training.config import ExperimentConfig
from leadscore.training.run import resolve_spec

CONFIGS = sorted((Path(__file__).parents[1] / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_experiment_config_is_valid(path):
    cfg = ExperimentConfig.from_yaml(path)
    spec = resolve_spec(cfg)
    assert spec.name == cfg.model
    if cfg.horizon_days:
        assert spec.label.days == cfg.horizon_days
        assert spec.truth_column is None or cfg.horizon_days == 30


def test_there_is_a_baseline_per_model_and_a_sweep():
    cfgs = [ExperimentConfig.from_yaml(p) for p in CONFIGS]
    assert {c.model for c in cfgs if c.sweep is None} >= {"conversion", "contact", "churn"}
    assert any(c.sweep is not None for c in cfgs)


def test_sweep_logs_nested_runs(trained, sim_data):
    """A two-trial sweep: trials are nested MLflow runs under the final run."""
    from mlflow import MlflowClient

    from leadscore.training.config import Sweep
    from leadscore.training.run import train

    cfg = ExperimentConfig(model="contact", run_name="tiny-sweep", sweep=Sweep(
        n_trials=2, space={"num_leaves": {"low": 7, "high": 15, "kind": "int"}}))
    res = train(sim_data, cfg, register=False)
    client = MlflowClient()
    exp = client.get_experiment_by_name("leadscore-contact")
    kids = client.search_runs([exp.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{res.run_id}'")
    assert len(kids) == 2
    assert all("valid_roc_auc" in k.data.metrics for k in kids)
    assert res.version is None
