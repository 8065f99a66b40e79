"""LightGBM fitting with early stopping, deterministic settings, and held-out calibration."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from leadscore.artifact import Calibrator, LeadModel, check_booster
from leadscore.features import catalog
from leadscore.models.spec import ModelSpec
from leadscore.training import lgb_params, reference
from leadscore.training.dataset import TrainingSet, lead_share

log = logging.getLogger(__name__)

_NOT_BOOSTER_PARAMS = ("num_boost_round", "early_stopping_rounds", "min_leads_in_leaf",
                       "recency_half_life_days")


@dataclass
class FitResult:
    model: LeadModel
    best_iteration: int
    params: dict
    #: a column of per-row starting margins LightGBM was boosted from (``init_score``), added
    #: to the trees' margin here; a served model carries its start itself
    #: (:attr:`~leadscore.artifact.LeadModel.start`)
    init: str | None = None
    #: the training rows' recency half-life in days (:func:`recency_weights`), if any
    half_life: float | None = None

    def margin(self, df: pd.DataFrame, num_threads: int = 1) -> np.ndarray:
        return margin(self.model, df, self.init, num_threads)

    def predict_proba(self, df: pd.DataFrame, num_threads: int = 1) -> np.ndarray:
        return self.model.calibrator(self.margin(df, num_threads))


def margin(model: LeadModel, df: pd.DataFrame, init: str | None, num_threads: int = 1):
    """The booster's margin, plus the starting margin column ``init`` when it was fitted
    from one."""
    raw = model.raw(df, num_threads=num_threads)
    return raw if init is None else raw + df[init].to_numpy(dtype=float)


def categories_of(frame: pd.DataFrame, features: list[str]) -> dict[str, list[str]]:
    """The category levels seen in training, in sorted order; prediction frames must use
    exactly these (LightGBM maps categories by code, not by value)."""
    out = {}
    known = [f for f in features
             if f in catalog.BY_NAME
             or f.startswith((catalog.VOCAB_PREFIX, catalog.COLUMN_PREFIX))]
    for f in catalog.categorical(known):
        vals = frame[f].astype("object").dropna().astype(str).unique().tolist()
        out[f] = sorted(vals)
    return out


def rows_per_lead(rows: pd.DataFrame) -> float:
    """Training rows per distinct lead: a lead open at many weekly cutoffs is many rows."""
    return len(rows) / max(rows["lead_id"].nunique(), 1) if len(rows) else 1.0


def merged_params(spec: ModelSpec, overrides: dict | None = None) -> dict:
    """The spec's settings under the run's overrides. A leaf size given in rows
    (``min_data_in_leaf``) replaces one given in leads, wherever each comes from."""
    over = lgb_params.normalize(overrides or {})
    params = {**lgb_params.normalize(spec.params), **over}
    if "min_data_in_leaf" in over and "min_leads_in_leaf" in over:
        raise ValueError("min_data_in_leaf (rows) and min_leads_in_leaf (leads) are the same "
                         "limit; give one")
    if "min_data_in_leaf" in over:
        params.pop("min_leads_in_leaf", None)
    elif "min_leads_in_leaf" in over:
        params.pop("min_data_in_leaf", None)
    return params


def booster_params(spec: ModelSpec, features: list[str], seed: int, num_threads: int,
                   overrides: dict | None = None, per_lead: float = 1.0) -> dict:
    """LightGBM's settings for a fit; ``per_lead``: the training rows per lead, which turns
    ``min_leads_in_leaf`` into LightGBM's ``min_data_in_leaf``."""
    params = merged_params(spec, overrides)
    if "min_leads_in_leaf" in params and "min_data_in_leaf" not in params:
        params["min_data_in_leaf"] = max(1, round(params["min_leads_in_leaf"] * per_lead))
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


def recency_weights(as_of: pd.Series, half_life_days: float | None) -> np.ndarray | None:
    """Training-row weights that halve every ``half_life_days`` of a row's cutoff before the
    latest one (None: every row counts the same). Buyers, sources and seasons drift: the
    cutoffs nearest the days a model will score teach it most, while older ones still count
    where recent rows are few."""
    if not half_life_days:
        return None
    t = pd.to_datetime(as_of, utc=True)
    age = (t.max() - t).dt.total_seconds().to_numpy() / 86_400.0
    return np.exp2(-age / float(half_life_days))


def _booster(spec: ModelSpec, features: list[str], cats: dict, train_df: pd.DataFrame,
             valid_df: pd.DataFrame | None, params: dict, rounds: int,
             patience: int | None, init: str | None = None,
             half_life: float | None = None) -> tuple[lgb.Booster, int]:
    """Boost ``rounds`` trees, stopping early on ``valid_df`` when given; keeps only the trees
    early stopping chose, so serving cannot use a different count. ``half_life``: the
    training rows' :func:`recency_weights` (early stopping weighs every valid row alike)."""
    proto = LeadModel(spec.name, booster=None, features=features, categories=cats,  # type: ignore[arg-type]
                      calibrator=Calibrator("none"))
    def start(df):
        return None if init is None else df[init].to_numpy(dtype=float)

    dtrain = lgb.Dataset(proto.frame(train_df), label=train_df["label"].to_numpy(),
                         categorical_feature=list(cats), free_raw_data=False,
                         init_score=start(train_df),
                         weight=recency_weights(train_df["as_of"], half_life))
    kw: dict = {}
    if valid_df is not None:
        kw["valid_sets"] = [lgb.Dataset(proto.frame(valid_df), label=valid_df["label"].to_numpy(),
                                        reference=dtrain, init_score=start(valid_df))]
        kw["valid_names"] = ["valid"]
        kw["callbacks"] = [lgb.early_stopping(patience, first_metric_only=True, verbose=False)]
    booster = lgb.train(params, dtrain, num_boost_round=rounds, **kw)
    best = booster.best_iteration or booster.current_iteration()
    booster = lgb.Booster(model_str=booster.model_to_string(num_iteration=best))
    check_booster(booster, spec.name)  # never registered if serving would score it wrong
    return booster, int(best)


def boosted_rows(df: pd.DataFrame, boost_label: str | None) -> pd.DataFrame:
    """The rows boosting learns from: all of ``df``, or with ``boost_label`` as their label
    and the rows without one (a window not observed) left out."""
    if boost_label is None:
        return df
    has = df[boost_label].notna()
    return df[has].assign(label=df.loc[has, boost_label].astype("int8"))


def _calibrated(spec: ModelSpec, booster: lgb.Booster, features: list[str], cats: dict,
                calib_df: pd.DataFrame, num_threads: int, init: str | None = None) -> LeadModel:
    model = LeadModel(
        name=spec.name, booster=booster, features=features, categories=cats,
        calibrator=Calibrator("none"), grades=spec.grades, label=spec.label.describe(),
    )
    m = margin(model, calib_df, init, num_threads)
    model.calibrator = fit_calibrator(spec.calibration, m, calib_df["label"].to_numpy())
    return model


def _two_classes(spec: ModelSpec, parts: dict[str, pd.DataFrame]) -> None:
    for name, part in parts.items():
        if part["label"].nunique() < 2:
            raise ValueError(
                f"{spec.name}: the {name} part has {len(part):,} rows and one class only; "
                "more data or another cutoff is needed"
            )


def fit(
    spec: ModelSpec,
    ts: TrainingSet,
    *,
    seed: int = 0,
    num_threads: int = 2,
    overrides: dict | None = None,
    init: str | None = None,
    boost_label: str | None = None,
) -> FitResult:
    """The evaluation fit: boosted on ``fit``, stopped early on ``valid``, calibrated on
    ``calib``; the holdout (``test``) stays unseen. ``init``: a column of starting margins
    (LightGBM's ``init_score``) on every part. ``boost_label``: a column of other labels the
    trees learn their ranking from (boosting and early stopping); calibration always maps
    the margin to the spec's own ``label``. The model carries the drift reference of the
    ``fit`` rows at the latest cutoffs (:mod:`leadscore.training.reference`)."""
    features = list(spec.features)
    fit_df, valid_df, calib_df = ts.part("fit"), ts.part("valid"), ts.part("calib")
    boost_fit, boost_valid = boosted_rows(fit_df, boost_label), boosted_rows(valid_df,
                                                                              boost_label)
    _two_classes(spec, {"fit": boost_fit, "valid": boost_valid, "calib": calib_df})
    cats = categories_of(fit_df, features)
    params = booster_params(spec, features, seed, num_threads, overrides,
                            rows_per_lead(boost_fit))
    merged = merged_params(spec, overrides)
    half_life = merged.get("recency_half_life_days")
    booster, best = _booster(spec, features, cats, boost_fit, boost_valid, params,
                             int(merged.get("num_boost_round", 2000)),
                             int(merged.get("early_stopping_rounds", 100)), init, half_life)
    model = _calibrated(spec, booster, features, cats, calib_df, num_threads, init)
    log.info("%s: %d trees, calibrated (%s) on %d rows", spec.name, best, spec.calibration,
             len(calib_df))
    fr = FitResult(model=model, best_iteration=best, params=params, init=init,
                   half_life=half_life)
    ref_rows = reference.latest(fit_df)
    reference.attach(model, ref_rows, fr.predict_proba(ref_rows, num_threads), spec.entity)
    return fr


#: share of leads the refit keeps out of boosting to calibrate on
REFIT_CALIB_SHARE = 0.1


def refit(
    spec: ModelSpec,
    ts: TrainingSet,
    trees: int,
    *,
    seed: int = 0,
    num_threads: int = 2,
    overrides: dict | None = None,
    init: str | None = None,
    boost_label: str | None = None,
) -> tuple[LeadModel, int]:
    """The model to register: the evaluation's settings and tree count, boosted on every
    labelled row (the holdout and the purged cutoffs too) except a lead-grouped tenth kept to
    calibrate on. Out-of-time evaluation holds back the most recent months, exactly the ones
    closest to the leads the model will score; the evaluation fit measured the recipe, this
    applies it to all the data. ``init``, ``boost_label``: as in :func:`fit`. Returns the
    model (with the drift reference of the rows it was boosted on, at the latest cutoffs)
    and their number."""
    rows = ts.labelled()
    calib = lead_share(rows["lead_id"], seed + 1) < REFIT_CALIB_SHARE
    train_df, calib_df = rows[~calib], rows[calib]
    boost_df = boosted_rows(train_df, boost_label)
    _two_classes(spec, {"refit": boost_df, "refit calibration": calib_df})
    features = list(spec.features)
    cats = categories_of(train_df, features)
    params = booster_params(spec, features, seed, num_threads, overrides,
                            rows_per_lead(boost_df))
    booster, _ = _booster(spec, features, cats, boost_df, None, params, trees, None, init,
                          merged_params(spec, overrides).get("recency_half_life_days"))
    log.info("%s: refit with %d trees on %d rows, calibrated on %d", spec.name, trees,
             len(train_df), len(calib_df))
    model = _calibrated(spec, booster, features, cats, calib_df, num_threads, init)
    ref_rows = reference.latest(train_df)
    p = model.calibrator(margin(model, ref_rows, init, num_threads))
    reference.attach(model, ref_rows, p, spec.entity)
    return model, len(train_df)
