"""Experiment configs: the YAML a data scientist writes, validated by pydantic."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from leadscore.models.spec import ModelSpec
from leadscore.training import lgb_params


class SearchDim(BaseModel):
    model_config = ConfigDict(extra="forbid")
    low: float
    high: float
    kind: Literal["float", "log", "int"] = "float"


class Sweep(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n_trials: int = Field(20, ge=1, le=500)
    metric: Literal["roc_auc", "log_loss"] = "roc_auc"
    space: dict[str, SearchDim]

    @field_validator("space")
    @classmethod
    def _space(cls, v: dict[str, SearchDim]) -> dict[str, SearchDim]:
        """Searched settings pass the same allow-list as ``params``, with bounds of their type
        (an integer setting needs ``kind: int``), under leadscore's names."""
        out: dict[str, SearchDim] = {}
        for key, dim in v.items():
            name = lgb_params.canonical(key)
            if name in out:
                raise ValueError(f"{key}: {name} is searched twice")
            kind = lgb_params.SUPPORTED[name].kind
            if kind not in (int, float):
                raise ValueError(f"{key} cannot be searched: it is not a number")
            if kind is int and dim.kind != "int":
                raise ValueError(f"{key} takes integers: search it with kind: int")
            if dim.low > dim.high:
                raise ValueError(f"{key}: low {dim.low:g} is above high {dim.high:g}")
            if dim.kind == "log" and dim.low <= 0:
                raise ValueError(f"{key}: a log search needs low above 0")
            for bound in (dim.low, dim.high):
                lgb_params.check_value(name, int(bound) if kind is int else bound)
            out[name] = dim
        return out


class Btyd(BaseModel):
    """Churn's classical model (:mod:`leadscore.training.btyd`). ``baseline`` fits it and logs
    its holdout metrics (``btyd_roc_auc``...) beside LightGBM's; ``init_score`` also boosts
    LightGBM from the logit of its churn probability, and the registered model carries the
    fit (BG/NBD only: serving computes it from the model's features); ``feature`` gives the
    probability to LightGBM as a feature: an experiment, evaluated and logged but not
    registered, since serving does not compute it. ``off``: none. The default ``auto`` is
    ``baseline`` plus both fits, trees alone and from the start, keeping the one better on
    the valid part (:func:`leadscore.training.btyd.choose_start`): the start helped churn on
    real logs with short histories but lowered it on the simulator, so no fixed choice suits
    every data set. Where the start cannot run (no library, no servable inputs, Pareto/NBD),
    ``auto`` is ``baseline`` with a note."""

    model_config = ConfigDict(extra="forbid")
    use: Literal["auto", "off", "baseline", "init_score", "feature"] = "auto"
    model: Literal["bgnbd", "pareto_nbd"] = "bgnbd"
    #: fits per run, at cutoffs spread over the run's; each cutoff is scored by the latest
    #: fit at or before it (population parameters drift slowly; a fit costs seconds)
    refits: int = Field(4, ge=1, le=100)

    @model_validator(mode="after")
    def _servable(self) -> Btyd:
        if self.use == "init_score" and self.model != "bgnbd":
            raise ValueError(f"use init_score needs model bgnbd: a {self.model} starting "
                             "score cannot be computed at serving (use baseline to compare it)")
        return self


class Vocabulary(BaseModel):
    """The data-driven vocabulary (:mod:`leadscore.training.vocabulary`): the ``event_types``
    most frequent event types outside the contract's standard list, seen at least
    ``min_events`` times before the holdout, get features of their own (0: none). Lead
    models only; the slot model keeps its fixed context."""

    model_config = ConfigDict(extra="forbid")
    event_types: int = Field(10, ge=0, le=50)
    min_events: int = Field(20, ge=1)
    #: extra columns of the leads table (CRM fields) as features: ``auto`` (numbers, and
    #: text with at most ``max_categories`` values, present on ``min_present`` of the
    #: leads), ``none``, or a list of column names (numbers, else text categories)
    lead_columns: Literal["auto", "none"] | list[str] = "auto"
    #: columns never used, e.g. CRM fields filled in after the first contact (they can give
    #: the outcome away: see :func:`leadscore.training.vocabulary.choose_lead_columns`)
    exclude: list[str] = Field(default_factory=list)
    max_categories: int = Field(50, ge=2, le=10_000)
    min_present: float = Field(0.1, gt=0, le=1)


class ExperimentConfig(BaseModel):
    """One experiment. Unknown keys are errors, so a typo never silently does nothing."""

    model_config = ConfigDict(extra="forbid")
    model: Literal["conversion", "order-7d", "order-15d", "order-90d", "contact", "churn",
                   "contact-slot"]
    run_name: str | None = None
    description: str = ""
    #: LightGBM settings over the spec's (bool first: YAML ``true`` stays a boolean); only
    #: those of :mod:`leadscore.training.lgb_params`, checked before any data is read
    params: dict[str, bool | int | float | str] = Field(default_factory=dict)
    horizon_days: float | None = Field(None, gt=0)
    #: auto: out-of-time when the data allows it, else grouped by lead (the run says which)
    split: Literal["auto", "time", "entity"] = "auto"
    as_of: list[str] | None = None
    #: the end of observation (labels read up to it); default: estimated from daily volumes,
    #: so rows dated after the data's real end do not count
    observed_until: str | None = None
    seed: int = 0
    #: register a model refit on every labelled row with the evaluation's tree count (the
    #: logged metrics stay the evaluation fit's, on a holdout it never saw)
    refit: bool = True
    exclude_features: list[str] = Field(default_factory=list)
    calibration: Literal["isotonic", "sigmoid"] | None = None
    engagement_events: list[str] | None = None
    sweep: Sweep | None = None
    #: churn only: the BG/NBD / Pareto/NBD baseline and how LightGBM uses it
    btyd: Btyd = Field(default_factory=Btyd)
    #: event types beyond the standard list that get features of their own
    vocabulary: Vocabulary = Field(default_factory=Vocabulary)

    @model_validator(mode="after")
    def _btyd_churn_only(self) -> ExperimentConfig:
        if self.model != "churn" and self.btyd.use in ("init_score", "feature"):
            raise ValueError(f"btyd.use {self.btyd.use!r} applies to churn only")
        return self

    @field_validator("params")
    @classmethod
    def _params(cls, v: dict) -> dict:
        return lgb_params.normalize(v)

    @field_validator("as_of")
    @classmethod
    def _ts(cls, v):
        if v is None:
            return v
        import pandas as pd

        for t in v:
            pd.Timestamp(t)  # raises with the offending value
        return v

    @field_validator("observed_until")
    @classmethod
    def _end(cls, v):
        if v is not None:
            import pandas as pd

            pd.Timestamp(v)  # raises with the offending value
        return v

    @classmethod
    def from_yaml(cls, path: Path) -> ExperimentConfig:
        data = yaml.safe_load(Path(path).read_text()) or {}
        return cls.model_validate(data)

    def apply(self, spec: ModelSpec) -> ModelSpec:
        if self.exclude_features:
            unknown = set(self.exclude_features) - set(spec.features)
            if unknown:
                raise ValueError(f"exclude_features not in {spec.name}: {sorted(unknown)}")
            feats = tuple(f for f in spec.features if f not in self.exclude_features)
            mono = {k: v for k, v in spec.monotone.items() if k in feats}
            spec = replace(spec, features=feats, monotone=mono)
        if self.calibration:
            spec = replace(spec, calibration=self.calibration)
        if self.engagement_events:
            spec = replace(spec, label=replace(spec.label, events=tuple(self.engagement_events)))
        return spec.validate()


def config_error(e: ValidationError) -> str:
    """A config's validation errors on one line, each as ``field: message``."""
    parts = []
    for err in e.errors():
        where = ".".join(str(x) for x in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)
