"""Churn's classical starting score, as serving computes it: BG/NBD from catalog features.

BG/NBD reads, per entity at the cutoff, ``frequency`` (repeat purchase days), ``recency``
(days from the first to the last purchase) and ``T`` (days from the first purchase, or from
the lead's creation without one, to the cutoff). Serving has only feature rows, so these come
from the whole-history features of the engagement events' group (the feature job computes
them once for every engine): :func:`summaries`. Training fits on the same summaries, so the
fit and the served margin read one definition.

Against ``training.btyd.summaries`` (day floors): frequency is equal (``active_days`` counts
UTC days); recency and T are exact times, not whole days, and an entity with one purchase
day has T from its last purchase of that day. They coincide when purchases fall on midnight.

Serving code: imports nothing of training (:mod:`leadscore.artifact` carries a :class:`Start`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.special import betaln

#: format of :meth:`Start.to_json` (a newer one is refused by older code, never misread)
START_VERSION = 1
KINDS = ("bgnbd",)
#: the starting churn probability is kept inside this margin of 0 and 1 (a finite logit)
CLIP = 1e-4
#: summaries are clamped to [0, this] days: odd inputs give a finite start, never NaN
MAX_DAYS = 1e6
#: the roles a start reads, in the order of :attr:`Start.features`
ROLES = ("active_days", "since_last", "typical_gap", "age")


def inputs_for(events: Sequence[str] | None) -> dict[str, str] | None:
    """Role → catalog feature for the engagement ``events``: the whole-history group of
    exactly these types (``active_days``, ``days_since_last``, ``typical_gap_days``) and
    ``lead_age_days`` (T without a purchase); None when no group has these types."""
    from leadscore.features import catalog

    want = None if events is None else frozenset(events)
    for slug, types, *_ in catalog.HISTORY_GROUPS:
        if (None if types is None else frozenset(types)) != want:
            continue
        names = {"active_days": f"{slug}_active_days", "since_last": f"{slug}_days_since_last",
                 "typical_gap": f"{slug}_typical_gap_days", "age": "lead_age_days"}
        if all(n in catalog.BY_NAME for n in names.values()):
            return names
    return None


def summaries(active_days, since_last, typical_gap, age) -> tuple[np.ndarray, ...]:
    """``frequency``, ``recency``, ``T`` (days) from the features' values (arrays; missing:
    NaN). recency = typical_gap x (active_days - 1) = last - first; T = since_last +
    recency = cutoff - first, or the lead's age without a purchase."""
    days = np.nan_to_num(np.asarray(active_days, dtype=float), nan=0.0)
    days = np.clip(days, 0.0, MAX_DAYS)
    bought = days >= 1
    freq = np.maximum(np.floor(days) - 1.0, 0.0)
    gap = np.clip(np.nan_to_num(np.asarray(typical_gap, dtype=float), nan=0.0), 0.0, MAX_DAYS)
    recency = np.clip(np.where(freq > 0, gap * freq, 0.0), 0.0, MAX_DAYS)
    last = np.nan_to_num(np.asarray(since_last, dtype=float), nan=0.0, posinf=MAX_DAYS)
    born = np.nan_to_num(np.asarray(age, dtype=float), nan=0.0, posinf=MAX_DAYS)
    T = np.where(bought, np.clip(last, 0.0, MAX_DAYS) + recency, np.clip(born, 0.0, MAX_DAYS))
    return freq, recency, np.clip(np.maximum(T, recency), 0.0, 2 * MAX_DAYS)


def bgnbd_p_none(params: dict[str, float], x: np.ndarray, tx: np.ndarray, T: np.ndarray,
                 t: float) -> np.ndarray:
    """BG/NBD: P(no purchase in (T, T+t] | x, t_x, T). A customer alive at T with rate λ
    buys nothing with prob exp(-λt); death comes only after a purchase, so the
    died-already term exists only for x > 0. Integrated over Gamma(r, α) and Beta(a, b)
    (Fader, Hardie & Lee 2005)."""
    r, alpha, a, b = (float(params[k]) for k in ("r", "alpha", "a", "b"))
    keep = betaln(a, b + x)
    later = keep - (r + x) * np.log(alpha + T + t)
    now = keep - (r + x) * np.log(alpha + T)
    with np.errstate(invalid="ignore", divide="ignore"):
        died = np.where(x > 0, betaln(a + 1, np.maximum(b + x - 1, 1e-12))
                        - (r + x) * np.log(alpha + tx), -np.inf)
    return np.exp(np.logaddexp(later, died) - np.logaddexp(now, died))


def churn_margin(p_none: np.ndarray) -> np.ndarray:
    """The logit of the classical churn probability, P(no purchase), kept finite."""
    p = np.clip(np.asarray(p_none, dtype=float), CLIP, 1 - CLIP)
    return np.log(p / (1.0 - p))


@dataclass(frozen=True)
class Start:
    """A model's starting margin: the classical model's churn logit, which the trees were
    boosted from (LightGBM's ``init_score``). ``features``: the catalog features it reads,
    one per :data:`ROLES`; ``horizon_days``: the churn horizon."""

    kind: str
    params: dict[str, float]
    horizon_days: float
    features: tuple[str, ...]

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"a starting margin of kind {self.kind!r} cannot be served "
                             f"(served kinds: {', '.join(KINDS)})")
        if len(self.features) != len(ROLES):
            raise ValueError(f"a starting margin reads {len(ROLES)} features ({ROLES}), "
                             f"not {len(self.features)}")

    def margin_of(self, cols: np.ndarray) -> np.ndarray:
        """The starting margin of rows whose :attr:`features` are the columns of ``cols``
        (rows x 4, in :data:`ROLES` order)."""
        cols = np.asarray(cols, dtype=float).reshape(-1, len(ROLES))
        x, tx, T = summaries(*cols.T)
        return churn_margin(bgnbd_p_none(self.params, x, tx, T, float(self.horizon_days)))

    def to_json(self) -> dict:
        return {"version": START_VERSION, **asdict(self), "features": list(self.features)}

    @classmethod
    def from_json(cls, d: dict) -> Start:
        v = int(d.get("version", 0))
        if v != START_VERSION:
            raise ValueError(f"starting margin format {v} is not one this code reads "
                             f"({START_VERSION})")
        return cls(kind=d["kind"], params={k: float(x) for k, x in d["params"].items()},
                   horizon_days=float(d["horizon_days"]), features=tuple(d["features"]))
