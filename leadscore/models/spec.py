"""What a model spec is: the label, the entity, the features, the parameters and the gate.

A spec is plain data. Training reads it to build the training set and fit; the registry stores
its name with every version; serving never imports a spec's training code, only the artifact.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from leadscore.features import catalog


@dataclass(frozen=True)
class Within:
    """Positive when an event of ``events`` happens in (t, t + horizon]."""

    events: tuple[str, ...]
    days: float = 30.0

    @property
    def hours(self) -> float:
        return self.days * 24.0

    def describe(self) -> str:
        return f"any of {', '.join(self.events)} within {self.days:g} days after the cutoff"


@dataclass(frozen=True)
class NoneWithin(Within):
    """Positive when NO event of ``events`` happens in (t, t + horizon] (going dark)."""

    def describe(self) -> str:
        return f"none of {', '.join(self.events)} within {self.days:g} days after the cutoff"


@dataclass(frozen=True)
class Responded:
    """Per contact attempt: positive when the outcome is one of ``outcomes`` (no horizon: the
    answer is immediate; ``days`` is 0 so time splits need no purge gap)."""

    outcomes: tuple[str, ...] = ("connected", "replied")
    days: float = 0.0
    events: tuple[str, ...] = ()

    @property
    def hours(self) -> float:
        return 0.0

    def describe(self) -> str:
        return f"attempt outcome in {', '.join(self.outcomes)}"


@dataclass(frozen=True)
class Gate:
    """A challenger replaces the champion only if it beats it on the same holdout by
    ``min_gain`` in ``metric`` (higher is better unless ``lower_is_better``)."""

    metric: str = "roc_auc"
    min_gain: float = 0.002
    lower_is_better: bool = False

    def passes(self, challenger: float, champion: float) -> bool:
        gain = champion - challenger if self.lower_is_better else challenger - champion
        return gain >= self.min_gain


@dataclass(frozen=True)
class DealerGate:
    """Per dealer, on the same holdout: a challenger better overall may still rank one
    dealer's leads worse. A dealer with at least ``min_positives`` positives whose AUC drops
    by more than ``tolerance`` blocks promotion; smaller dealers are too noisy to judge."""

    min_positives: int = 30
    tolerance: float = 0.02

    def __post_init__(self) -> None:
        if self.min_positives < 1:
            raise ValueError("min_positives must be at least 1")
        if not 0.0 <= self.tolerance < 1.0:
            raise ValueError("tolerance must be in [0, 1)")

    def judged(self, positives: int) -> bool:
        return positives >= self.min_positives

    def blocks(self, challenger: float, champion: float) -> bool:
        return champion - challenger > self.tolerance


DEFAULT_PARAMS: dict = {
    "objective": "binary",
    "learning_rate": 0.05,
    "num_leaves": 31,
    # Depth-limited trees keep exact TreeSHAP reasons cheap (cost grows with depth squared)
    # at no measurable AUC cost on tabular behaviour counts.
    "max_depth": 6,
    # A leaf holds at least this many *leads*: a lead is a training row at every weekly
    # cutoff it is open at, and a leaf of 100 rows can be the same eight customers twelve
    # times over (the trainer turns this into min_data_in_leaf by the rows per lead).
    "min_leads_in_leaf": 100,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "max_bin": 255,
    "num_boost_round": 2000,
    "early_stopping_rounds": 100,
}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    #: which rows are scored: "open" leads, "open_or_owner" (churn also covers owners), or
    #: "contact_attempt" (one row per logged attempt, the slot model)
    entity: str
    label: Within | NoneWithin | Responded
    features: tuple[str, ...]
    params: dict = field(default_factory=lambda: dict(DEFAULT_PARAMS))
    #: +1: the score never falls when this feature rises, all else equal
    monotone: dict[str, int] = field(default_factory=dict)
    calibration: str = "isotonic"  # or "sigmoid" (Platt)
    gate: Gate = field(default_factory=Gate)
    dealer_gate: DealerGate = field(default_factory=DealerGate)
    #: lead-score grade cut-offs on the calibrated probability: A >= a, B >= b, C >= c, else D
    grades: tuple[float, float, float] = (0.5, 0.25, 0.1)
    #: rolling snapshot cadence for training cutoffs
    cutoff_every_days: int = 7
    #: column of the simulator's truth.parquet that holds the oracle probability, if any
    truth_column: str | None = None
    known_limits: tuple[str, ...] = ()

    @property
    def registered_name(self) -> str:
        return f"leadscore-{self.name}"

    def with_horizon(self, days: float | None) -> ModelSpec:
        if days is None:
            return self
        spec = replace(self, label=replace(self.label, days=float(days)))
        # the simulator's truth is for the default horizon only
        return spec if days == self.label.days else replace(spec, truth_column=None)

    def validate(self) -> ModelSpec:
        catalog.get(self.features)
        bad = [f for f in self.monotone if f not in self.features]
        if bad:
            raise ValueError(f"{self.name}: monotone constraints on unused features {bad}")
        if self.calibration not in ("isotonic", "sigmoid"):
            raise ValueError(f"{self.name}: calibration must be isotonic or sigmoid")
        return self
