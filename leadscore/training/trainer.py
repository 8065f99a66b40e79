"""LightGBM fitting with early stopping, deterministic settings, and held-out calibration."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from leadscore.artifact import Calibrator, LeadModel
from leadscore.features import catalog
from leadscore.models.spec import ModelSpec
from leadscore.training.dataset import TrainingSet

log = logging.getLogger(__name__)

_NOT_BOOSTER_PARAMS = ("num_boost_round", "early_stopping_rounds")


@dataclass
class FitResult:
    model: LeadModel
    best_iteration: int
    params: dict


def categories_of(frame: pd.DataFrame, features: list[str]) -> dict[str, list[str]]:
    """The category levels seen in training, in sorted order; prediction frames must use
    exactly these (LightGBM maps categories by code, not by value)."""
    out = {}
    for f in catalog.categorical(features):
        vals = frame[f].astype("object").dropna().astype(str).unique().tolist()
        out[f] = sorted(vals)
    return out


def booster_params(spec: ModelSpec, features: list[str], seed: int, num_threads: int,
                   overrides: dict | None = None) -> dict:
    params = {**spec.params, **(overrides or {})}
    params = {k: v for k, v in params.items() if k not in _NOT_BOOSTER_PARAMS}
    params.update(
        {
            "monotone_constraints": [int(spec.monotone.get(f, 0)) for f in features],
            "monotone_constraints_method": "intermediate",
            "seed": seed,
            "deterministic": True,
            "force_col_wise": True,
            "num_threads": num_threads,
            "verbosity": -1,
            "metric": ["binary_logloss", "auc"],
        }
    )
    return params


def fit_calibrator(method: str, margin: np.ndarray, y: np.ndarray) -> Calibrator:
    if method == "isotonic":
        iso = IsotonicRegression(out_of_bounds="clip", y_min=1e-4, y_max=1 - 1e-4)
        iso.fit(margin, y)
        return Calibrator("isotonic", x=iso.X_thresholds_.tolist(), y=iso.y_thresholds_.tolist())
    lr = LogisticRegression(C=1e6)
    lr.fit(margin.reshape(-1, 1), y)
    return Calibrator("sigmoid", a=float(lr.coef_[0, 0]), b=float(lr.intercept_[0]))


def fit(
    spec: ModelSpec,
    ts: TrainingSet,
    *,
    seed: int = 0,
    num_threads: int = 2,
    overrides: dict | None = None,
) -> FitResult:
    features = list(spec.features)
    fit_df, valid_df, calib_df = ts.part("fit"), ts.part("valid"), ts.part("calib")
    for name, part in (("fit", fit_df), ("valid", valid_df), ("calib", calib_df)):
        if part["label"].nunique() < 2:
            raise ValueError(
                f"{spec.name}: the {name} part has {len(part):,} rows and one class only; "
                "more data or another cutoff is needed"
            )
    cats = categories_of(fit_df, features)
    proto = LeadModel(spec.name, booster=None, features=features, categories=cats,  # type: ignore[arg-type]
                      calibrator=Calibrator("none"))
    params = booster_params(spec, features, seed, num_threads, overrides)
    merged = {**spec.params, **(overrides or {})}
    dtrain = lgb.Dataset(proto.frame(fit_df), label=fit_df["label"].to_numpy(),
                         categorical_feature=list(cats), free_raw_data=False)
    dvalid = lgb.Dataset(proto.frame(valid_df), label=valid_df["label"].to_numpy(),
                         reference=dtrain)
    booster = lgb.train(
        params,
        dtrain,
        num_boost_round=int(merged.get("num_boost_round", 2000)),
        valid_sets=[dvalid],
        valid_names=["valid"],
        callbacks=[lgb.early_stopping(int(merged.get("early_stopping_rounds", 100)),
                                      first_metric_only=True, verbose=False)],
    )
    best = booster.best_iteration or booster.current_iteration()
    # Keep only the trees early stopping chose, so serving cannot use a different count.
    booster = lgb.Booster(model_str=booster.model_to_string(num_iteration=best))
    model = LeadModel(
        name=spec.name, booster=booster, features=features, categories=cats,
        calibrator=Calibrator("none"), grades=spec.grades, label=spec.label.describe(),
    )
    margin = model.raw(calib_df, num_threads=num_threads)
    model.calibrator = fit_calibrator(spec.calibration, margin, calib_df["label"].to_numpy())
    log.info("%s: %d trees, calibrated (%s) on %d rows", spec.name, best, spec.calibration,
             len(calib_df))
    return FitResult(model=model, best_iteration=int(best), params=params)
