"""BG/NBD and Pareto/NBD ("buy till you die"): churn's classical baseline and starting score.

Per entity at a cutoff, from purchase *days* before it (``ts < as_of`` and ``ingested_at <=
as_of``, the feature job's rule): ``frequency`` = repeat purchase days, ``recency`` = days from
the first to the last, ``T`` = days from the first to the cutoff. An entity with no purchase yet
is born at its ``created_at`` with no repeats. The models give P(at least one purchase within
H days), the complement of churn's "no engagement within H days".

Two ways to get the summaries: :func:`summaries` in SQL over the events, and
:func:`feature_summaries` from the whole-history catalog features of the engagement events
(:func:`leadscore.classical.summaries`), which serving computes too. Runs use the second when
the engagement events have a whole-history group (the default, inbound events), so a model
boosted from the classical margin is fitted on what serving will read.

Library: PyMC-Marketing's CLV module (maintained; works on pandas 3 and numpy 2), fitted by
MAP: its weak priors keep the fit finite where the maximum likelihood sits on a boundary
(BG/NBD's dropout going to zero), where lifetimes (unmaintained since 2020) stops with a
convergence error. PyMC-Marketing is only the fitter: BG/NBD's P(no purchase) is computed here
in closed form (Fader, Hardie & Lee 2005; the library's version is wrong for customers
without a repeat purchase, it keeps a death-before-any-repeat term); Pareto/NBD's comes from
the library (Fader & Hardie's note 028). Both are checked against simulation in the tests.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import duckdb
import numpy as np
import pandas as pd

from leadscore import classical
from leadscore.classical import bgnbd_p_none
from leadscore.training.evaluate import CLEAR_WIN, RESAMPLES, win_share

log = logging.getLogger(__name__)

KINDS = ("bgnbd", "pareto_nbd")
#: the column the training frame gets: P(at least one purchase within the horizon)
COLUMN = "btyd_p_purchase"
DAY_US = 86_400_000_000
#: rows a fit sees at most (a seeded sample beyond it): the fit is population-level
MAX_FIT_ROWS = 20_000


class MissingLibrary(ImportError):
    """PyMC-Marketing is not installed (the ``btyd`` extra)."""


def _clv():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from pymc_marketing import clv
    except ImportError as e:
        raise MissingLibrary(
            "the BG/NBD / Pareto/NBD baseline needs PyMC-Marketing: "
            "pip install 'leadscore[btyd]'") from e
    return clv


def available() -> bool:
    try:
        _clv()
    except MissingLibrary:
        return False
    return True


def summaries(con: duckdb.DuckDBPyConnection, pairs: pd.DataFrame,
              events: Sequence[str]) -> pd.DataFrame:
    """``frequency``, ``recency`` and ``T`` (days) for each (lead_id, as_of) of ``pairs``,
    from the ``events`` of types ``events`` visible at ``as_of``. Days are UTC calendar days;
    several purchases on one day are one purchase."""
    keys = pairs[["lead_id", "as_of"]].drop_duplicates().reset_index(drop=True)
    con.register("_btyd_pairs", keys)
    types = ", ".join("'" + t.replace("'", "''") + "'" for t in events)
    try:
        got = con.sql(f"""
        WITH p AS (SELECT lead_id, as_of, epoch_us(as_of) AS cut FROM _btyd_pairs),
        d AS (
            SELECT p.lead_id, p.cut, floor(epoch_us(e.ts) / {DAY_US}) AS day
            FROM p JOIN events e ON e.lead_id = p.lead_id
            WHERE e.event_type IN ({types}) AND e.ts < p.as_of
              AND coalesce(e.ingested_at, e.ts) <= p.as_of
            GROUP BY ALL),
        s AS (SELECT lead_id, cut, count(*) AS n, min(day) AS first, max(day) AS last
              FROM d GROUP BY ALL)
        SELECT p.lead_id, p.as_of, coalesce(s.n, 0) AS n, s.first, s.last,
               epoch_us(l.created_at) AS born, p.cut
        FROM p LEFT JOIN s ON s.lead_id = p.lead_id AND s.cut = p.cut
        LEFT JOIN leads l ON l.lead_id = p.lead_id
        """).df()
    finally:
        con.unregister("_btyd_pairs")
    n = got["n"].to_numpy(dtype=float)
    bought = n > 0
    first_us = np.where(bought, got["first"].to_numpy(dtype=float, na_value=np.nan) * DAY_US,
                        got["born"].to_numpy(dtype=float, na_value=np.nan))
    cut = got["cut"].to_numpy(dtype=float)
    # an entity with neither a purchase nor a creation time is born at the cutoff
    first_us = np.where(np.isnan(first_us), cut, np.minimum(first_us, cut))
    recency = np.where(bought, got["last"].to_numpy(dtype=float, na_value=0.0)
                       - got["first"].to_numpy(dtype=float, na_value=0.0), 0.0)
    T = (cut - first_us) / DAY_US
    out = pd.DataFrame({
        "lead_id": got["lead_id"].to_numpy(),
        "as_of": pd.to_datetime(got["as_of"], utc=True),
        "frequency": np.maximum(n - 1, 0),
        "recency": recency,
        "T": np.maximum(T, recency),
    })
    return pairs[["lead_id", "as_of"]].merge(out, on=["lead_id", "as_of"], how="left")


def feature_summaries(frame: pd.DataFrame, inputs: dict[str, str]) -> pd.DataFrame:
    """``lead_id``, ``as_of``, ``frequency``, ``recency``, ``T`` of each row of a feature
    frame, from the catalog features ``inputs`` names (:func:`leadscore.classical.inputs_for`),
    aligned to the frame's index."""
    x, tx, T = classical.summaries(*(frame[inputs[r]].to_numpy(dtype=float, na_value=np.nan)
                                     for r in classical.ROLES))
    return pd.DataFrame({"lead_id": frame["lead_id"].to_numpy(),
                         "as_of": frame["as_of"].to_numpy(),
                         "frequency": x, "recency": tx, "T": T}, index=frame.index)


@dataclass
class Fitted:
    """A fitted BTYD model: its point parameters, and P(purchase within H days) per entity."""

    kind: str
    params: dict[str, float]
    n: int
    model: object = field(default=None, repr=False)

    def p_purchase(self, summary: pd.DataFrame, horizon_days: float) -> np.ndarray:
        x = summary["frequency"].to_numpy(dtype=float)
        tx = summary["recency"].to_numpy(dtype=float)
        T = summary["T"].to_numpy(dtype=float)
        if self.kind == "bgnbd":
            p0 = bgnbd_p_none(self.params, x, tx, T, float(horizon_days))
        else:
            p0 = self._pareto_p_none(x, tx, T, float(horizon_days))
        return np.clip(1.0 - p0, 1e-6, 1 - 1e-6)

    def _pareto_p_none(self, x, tx, T, t) -> np.ndarray:
        data = pd.DataFrame({"customer_id": np.arange(len(x)), "frequency": x,
                             "recency": tx, "T": T})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p0 = self.model.expected_purchase_probability(  # type: ignore[attr-defined]
                data=data, n_purchases=0, future_t=t)
        return p0.mean(("chain", "draw")).to_numpy().ravel()


def fit(summary: pd.DataFrame, kind: str = "bgnbd", seed: int = 0) -> Fitted:
    """MAP fit of ``kind`` on the summary rows (a seeded sample past :data:`MAX_FIT_ROWS`)."""
    if kind not in KINDS:
        raise ValueError(f"btyd model must be one of {KINDS}, not {kind!r}")
    clv = _clv()
    s = summary[["frequency", "recency", "T"]].astype(float)
    if len(s) > MAX_FIT_ROWS:
        s = s.sample(MAX_FIT_ROWS, random_state=seed)
    data = s.reset_index(drop=True).assign(customer_id=np.arange(len(s)))
    cls = clv.BetaGeoModel if kind == "bgnbd" else clv.ParetoNBDModel
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = cls(data=data)
        model.fit(method="map", progressbar=False)
    post = model.idata.posterior  # type: ignore[union-attr]
    names = ("r", "alpha", "a", "b") if kind == "bgnbd" else ("r", "alpha", "s", "beta")
    params = {k: float(post[k].mean()) for k in names}
    log.info("btyd %s fit on %d rows: %s", kind, len(data), params)
    return Fitted(kind=kind, params=params, n=len(data), model=model)


def anchors(cutoffs: Sequence[pd.Timestamp], refits: int) -> list[pd.Timestamp]:
    """At most ``refits`` fitting cutoffs spread over ``cutoffs``, the earliest always one:
    each cutoff is scored with the latest fit at or before it (never a later one)."""
    cut = sorted(pd.Timestamp(c) for c in set(cutoffs))
    if not cut:
        return []
    idx = np.unique(np.linspace(0, len(cut) - 1, max(1, min(refits, len(cut)))).round()
                    .astype(int))
    return [cut[i] for i in idx]


def at_cutoffs(con: duckdb.DuckDBPyConnection, pairs: pd.DataFrame, events: Sequence[str],
               horizon_days: float, *, kind: str = "bgnbd", refits: int = 4,
               seed: int = 0) -> tuple[pd.Series, list[tuple[pd.Timestamp, Fitted]]]:
    """P(purchase within the horizon) for each row of ``pairs`` (aligned to its index), each
    cutoff scored by a fit on the summaries at an anchor cutoff at or before it. A fit uses
    no label: only the history visible at its anchor, so no cutoff sees the future."""
    summ = summaries(con, pairs, events)
    summ.index = pairs.index
    return at_cutoffs_of(summ, horizon_days, kind=kind, refits=refits, seed=seed)


def at_cutoffs_of(summ: pd.DataFrame, horizon_days: float, *, kind: str = "bgnbd",
                  refits: int = 4, seed: int = 0
                  ) -> tuple[pd.Series, list[tuple[pd.Timestamp, Fitted]]]:
    """:func:`at_cutoffs` on ready summaries (``as_of``, ``frequency``, ``recency``, ``T``)."""
    out = pd.Series(np.nan, index=summ.index, name=COLUMN)
    fits: list[tuple[pd.Timestamp, Fitted]] = []
    for a in anchors(list(summ["as_of"].unique()), refits):
        fits.append((a, fit(summ[summ["as_of"] == a], kind, seed)))
    for f, rows in _rows_of(summ, fits):
        out[rows] = f.p_purchase(summ[rows], horizon_days)
    return out, fits


def _rows_of(summ: pd.DataFrame, fits: list[tuple[pd.Timestamp, Fitted]]):
    """Each fit with the rows it scores: those from its anchor to the next fit's."""
    for i, (a, f) in enumerate(fits):
        upto = fits[i + 1][0] if i + 1 < len(fits) else None
        rows = (summ["as_of"] >= a) & ((summ["as_of"] < upto) if upto is not None else True)
        yield f, rows


def start(f: Fitted, horizon_days: float, inputs: dict[str, str]) -> classical.Start:
    """The starting margin a served model carries: the BG/NBD fit ``f`` reading the catalog
    features ``inputs`` (Pareto/NBD has no closed form here: not servable)."""
    if f.kind not in classical.KINDS:
        raise ValueError(f"a {f.kind} fit cannot be a served starting score (BG/NBD only)")
    return classical.Start(kind=f.kind, params=dict(f.params), horizon_days=float(horizon_days),
                           features=tuple(inputs[r] for r in classical.ROLES))


def start_margins(frame: pd.DataFrame, fits: list[tuple[pd.Timestamp, Fitted]],
                  horizon_days: float, inputs: dict[str, str]) -> np.ndarray:
    """Each row's starting margin (the classical churn logit) by the fit of its cutoff, the
    way a served model computes it (:meth:`leadscore.classical.Start.margin_of`)."""
    out = np.full(len(frame), np.nan)
    cols = frame[[inputs[r] for r in classical.ROLES]].to_numpy(dtype=float, na_value=np.nan)
    for f, rows in _rows_of(frame, fits):
        m = rows.to_numpy()
        out[m] = start(f, horizon_days, inputs).margin_of(cols[m])
    return out


@dataclass(frozen=True)
class AutoChoice:
    """What ``btyd.use: auto`` kept, and the held-out figures it chose on."""

    use_start: bool
    auc_trees: float
    auc_start: float
    #: share of the resamples in which the trees alone ranked better
    trees_win: float
    rows: int

    @property
    def choice(self) -> str:
        """The ``btyd_auto_choice`` param: the explicit ``btyd.use`` it amounts to."""
        return "init_score" if self.use_start else "none"

    def metrics(self) -> dict[str, float]:
        return {"btyd_auto_heldout_auc_trees": self.auc_trees,
                "btyd_auto_heldout_auc_start": self.auc_start,
                "btyd_auto_trees_win_share": self.trees_win}

    def note(self) -> str:
        kept = "the classical start" if self.use_start else "the trees alone"
        return (f"btyd.use auto: kept {kept} (held-out ROC AUC {self.auc_start:.4f} from the "
                f"start, {self.auc_trees:.4f} trees alone, on {self.rows:,} rows; the trees "
                f"ranked better in {self.trees_win:.0%} of {RESAMPLES} resamples of the "
                f"leads, {CLEAR_WIN:.0%} needed)")


def choose_start(held: pd.DataFrame, trees, started, num_threads: int = 1,
                 seed: int = 0) -> AutoChoice:
    """``btyd.use: auto``: keep the fit boosted from the classical start (``started``) unless
    the trees alone (``trees``; both :class:`~leadscore.training.trainer.FitResult` of the
    same spec and seed) rank the ``held`` rows clearly better: a higher ROC AUC in at least
    :data:`~leadscore.training.evaluate.CLEAR_WIN` of bootstrap resamples of the leads.

    The start is the classical model's answer, learnt from every customer's purchase rhythm:
    a prior. On few held-out leads an AUC difference is mostly noise (one split of a short
    real log chose the trees on its valid part while the test preferred the start), and
    there the prior is the safer bet; with many, the trees win where behaviour says more.
    ``held``: rows boosting never saw (:func:`~leadscore.training.dataset.held_out`), never
    the holdout. Raw margins: AUC is a ranking, which calibration does not change (but can
    tie)."""
    from sklearn.metrics import roc_auc_score

    y = held["label"].to_numpy()
    mt = trees.margin(held, num_threads=num_threads)
    ms = started.margin(held, num_threads=num_threads)
    auc_t, auc_s = float(roc_auc_score(y, mt)), float(roc_auc_score(y, ms))
    share = win_share(y, mt, ms, held["lead_id"], seed)
    return AutoChoice(use_start=share < CLEAR_WIN, auc_trees=auc_t, auc_start=auc_s,
                      trees_win=share, rows=len(held))
