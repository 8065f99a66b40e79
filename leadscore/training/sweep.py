"""An Optuna sweep over LightGBM parameters, each trial a nested MLflow run.

Trials are scored on the validation part only; the test part stays untouched until the final
model is evaluated, so the reported holdout metrics are not tuned on.
"""

from __future__ import annotations

import logging

import numpy as np

from leadscore.models.spec import ModelSpec
from leadscore.training import evaluate
from leadscore.training.config import ExperimentConfig
from leadscore.training.dataset import TrainingSet
from leadscore.training.trainer import fit

log = logging.getLogger(__name__)


def best_params(spec: ModelSpec, ts: TrainingSet, cfg: ExperimentConfig,
                num_threads: int = 2, init: str | None = None) -> dict:
    """The sweep's best settings; each trial boosted from the starting margins ``init`` (a
    column) when the run is, as the run's own fit will be."""
    import mlflow
    import optuna

    assert cfg.sweep is not None
    sweep = cfg.sweep
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    valid = ts.part("valid")

    def objective(trial: optuna.Trial) -> float:
        params = dict(cfg.params)
        for name, dim in sweep.space.items():
            if dim.kind == "int":
                params[name] = trial.suggest_int(name, int(dim.low), int(dim.high))
            else:
                params[name] = trial.suggest_float(name, dim.low, dim.high,
                                                   log=dim.kind == "log")
        fr = fit(spec, ts, seed=cfg.seed, num_threads=num_threads, overrides=params,
                 init=init)
        p = fr.predict_proba(valid, num_threads=num_threads)
        m = evaluate.metrics(valid["label"].to_numpy(), p)
        # btyd.use auto sweeps twice, trees alone and from the start: names tell them apart
        name = f"trial-{trial.number}" + ("-start" if init is not None else "")
        with mlflow.start_run(run_name=name, nested=True):
            mlflow.log_params(params)
            mlflow.log_metrics({f"valid_{k}": v for k, v in m.items() if np.isfinite(v)})
        return m[sweep.metric]

    direction = "minimize" if sweep.metric == "log_loss" else "maximize"
    study = optuna.create_study(direction=direction,
                                sampler=optuna.samplers.TPESampler(seed=cfg.seed))
    study.optimize(objective, n_trials=sweep.n_trials)  # nested under the caller's run
    log.info("sweep best %s=%.4f with %s", sweep.metric, study.best_value, study.best_params)
    return {**cfg.params, **study.best_params}
