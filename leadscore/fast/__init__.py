"""Optional accelerators: LightGBM's raw scores and TreeSHAP contributions by compiled kernels.

LightGBM's own ``predict`` (``raw_score``, ``pred_contrib``) is the reference: every model
leadscore accepts is scored by it. The kernels of :mod:`leadscore.fast.kernels` give the
same numbers without LightGBM's per-call cost (a request's one lead, the slot search's
candidates) and TreeSHAP several times faster in batches, but they re-implement LightGBM's
prediction. So :meth:`Accelerated.for_model` checks them against LightGBM on sample rows of
each model (rows built from the trees' own thresholds and category sets, to reach every
branch and missing-value rule, plus any rows the caller gives) and hands them out only when
they agree within :data:`TOLERANCE`; otherwise it says why, and the model keeps LightGBM.

``LEADSCORE_ACCELERATE=0`` turns them off: :func:`enabled` reads it, once, where a model is
loaded (:meth:`leadscore.artifact.LeadModel.load`), never inside the kernels.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

ENV = "LEADSCORE_ACCELERATE"
#: largest |difference| from LightGBM allowed on the sample rows, raw scores and contributions
#: (they differ only in summation order, many orders of magnitude below this)
TOLERANCE = 1e-9
#: rows of the generated sample; and the candidates per run of the slot-search check
PROBE_ROWS = 128
PROBE_GROUP = 70  # more than one 64-bit word of rows per run
#: LightGBM's model dump writes thresholds beyond this as this (``AvoidInf``): a split of NaN
#: against every number has a threshold of +inf, dumped as 1e300. The kernels read inputs
#: clamped to it, so that a larger number goes the way LightGBM sends it
HUGE = 1e300


def enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the accelerators may be used: ``LEADSCORE_ACCELERATE`` unset or not one of
    0/false/no/off."""
    value = (os.environ if environ is None else environ).get(ENV, "1")
    return value.strip().lower() not in ("0", "false", "no", "off")


class Accelerated:
    """One model's trees compiled for the kernels: the same interface as LightGBM's
    ``predict`` for what leadscore asks of it. Build it with :meth:`for_model`, which
    verifies it."""

    def __init__(self, tables):
        self.tables = tables
        self.n_features = tables.n_features

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def for_model(cls, model, sample: np.ndarray | None = None
                  ) -> tuple[Accelerated | None, str]:
        """The kernels for ``model`` (a :class:`~leadscore.artifact.LeadModel`), or None and
        why not: numba missing, trees the kernels cannot take, or numbers that differ from
        LightGBM's on the sample rows (generated from the trees, plus ``sample``: rows of
        the model's matrix)."""
        from leadscore.fast import kernels

        if not kernels.available():
            return None, "numba is not importable"
        try:
            tables = kernels.Tables(model.booster)
        except Exception as e:  # a tree the flattening does not understand
            return None, f"its trees cannot be compiled ({type(e).__name__}: {e})"
        why = tables.unsupported()
        if why:
            return None, why
        if tables.n_features != len(model.features):
            return None, (f"the booster has {tables.n_features} features, the artifact "
                          f"{len(model.features)}")
        acc = cls(tables)
        # a starting margin (the model's :attr:`start`) is added after the trees on either
        # path: checked on the same rows, so the numbers compared are the served ones
        start = model.start_margin if getattr(model, "start", None) is not None else None
        try:
            why = acc._disagreement(model.booster, _probe_rows(tables, sample), start)
        except Exception as e:
            return None, f"the kernels failed on the sample rows ({type(e).__name__}: {e})"
        return (None, why) if why else (acc, "")

    def _disagreement(self, booster, x: np.ndarray, start=None) -> str:
        """What differs from LightGBM on the rows ``x`` (every row count the kernels treat
        differently: single rows, a few, the whole sample, runs of candidates), or ''.
        ``start``: the model's starting margin of rows of ``x`` (a function), added to both
        sides as the model adds it (LightGBM + start is the reference)."""
        def plus(rows, raw, contrib=False):
            if start is None:
                return raw
            s = start(rows)
            if contrib:
                raw = raw.copy()
                raw[:, -1] += s
                return raw
            return raw + s

        raw = plus(x, booster.predict(x, raw_score=True, num_threads=1))
        contrib = plus(x, booster.predict(x, pred_contrib=True, num_threads=1), True)
        checks = [("raw scores", plus(x, self.raw(x)), raw),
                  ("raw scores, 2 threads", plus(x, self.raw(x, num_threads=2)), raw),
                  ("contributions", plus(x, self.contributions(x), True), contrib)]
        for lo, hi in ((0, 1), (1, 2), (2, 5), (5, 13)):
            part = x[lo:hi]
            checks.append((f"raw scores of {hi - lo} rows", plus(part, self.raw(part)),
                           raw[lo:hi]))
            checks.append((f"contributions of {hi - lo} rows",
                           plus(part, self.contributions(part), True), contrib[lo:hi]))
        # runs: the first rows with their most-split columns taken from the other rows
        counts = np.bincount(self.tables.arrays["feat"][self.tables.arrays["feat"] >= 0],
                             minlength=self.n_features)
        vcols = np.sort(np.argsort(-counts, kind="stable")[:3]).astype(np.int64)
        k = max(1, min(4, len(x) // PROBE_GROUP))
        group = min(PROBE_GROUP, len(x))
        lead = x[:k]
        vals = np.stack([np.roll(x, -i, axis=0)[:group][:, vcols] for i in range(k)])
        laid = np.repeat(lead, group, axis=0)
        laid[:, vcols] = vals.reshape(k * group, -1)
        checks.append(("raw scores of candidate runs", self.raw_runs(lead, vals, vcols),
                       booster.predict(laid, raw_score=True, num_threads=1).reshape(k, group)))
        for what, ours, theirs in checks:
            if ours.shape != theirs.shape:
                return f"{what}: shape {ours.shape} where LightGBM gives {theirs.shape}"
            diff = np.abs(ours - theirs)
            both_nan = np.isnan(ours) & np.isnan(theirs)
            worst = float(np.max(np.where(both_nan, 0.0, diff), initial=0.0))
            if not worst <= TOLERANCE:  # NaN too
                return (f"{what} differ from LightGBM's on sample rows by up to {worst:.3g} "
                        f"(allowed {TOLERANCE:g})")
        return ""

    # -- scoring --------------------------------------------------------------------------------
    def raw(self, x: np.ndarray, num_threads: int = 1) -> np.ndarray:
        """LightGBM's ``raw_score`` for the model's matrix ``x``."""
        from leadscore.fast import kernels

        x = _clamped(x)
        out = np.zeros(len(x))
        kernels.raw(self.tables, x, out, num_threads)
        return out

    def raw_runs(self, lead: np.ndarray, vals: np.ndarray, vcols: np.ndarray,
                 num_threads: int = 1) -> np.ndarray:
        """Raw scores (k x G) of runs of G rows that differ only in the columns ``vcols``: run
        i is ``lead[i]`` with its ``vcols`` set to each row of ``vals[i]`` (k x G x
        len(vcols)); the rows are never laid out in full."""
        from leadscore.fast import kernels

        lead = _clamped(lead)
        vals = _clamped(vals)
        vcols = np.asarray(vcols, dtype=np.int64)
        out = np.zeros(vals.shape[:2])
        kernels.raw_runs(self.tables, lead, vals, vcols, out, num_threads)
        return out

    def contributions(self, x: np.ndarray, num_threads: int = 1) -> np.ndarray:
        """LightGBM's ``pred_contrib`` (rows x features+1, the base value last)."""
        from leadscore.fast import kernels

        x = _clamped(x)
        out = np.zeros((len(x), self.n_features + 1))
        kernels.contributions(self.tables, x, out, num_threads)
        return out


def _clamped(x: np.ndarray) -> np.ndarray:
    """``x`` as C-ordered doubles with numbers above :data:`HUGE` read as it (NaN kept);
    not copied when nothing changes."""
    x = np.ascontiguousarray(x, dtype=np.float64)
    if (x > HUGE).any():
        x = np.minimum(x, HUGE)
    return x


def _probe_rows(tables, sample: np.ndarray | None, n: int = PROBE_ROWS,
                seed: int = 0) -> np.ndarray:
    """Rows that reach every kind of branch of the model's trees: per feature, values drawn
    from its split thresholds, the doubles just beside them, NaN, zero, values inside
    LightGBM's zero band; for categorical splits the codes of the split sets, codes beside
    them, negative and fractional codes. The first rows are all NaN and all zero. ``sample``
    rows (of the model's matrix) come after them."""
    ar = tables.arrays
    nf = tables.n_features
    rng = np.random.default_rng(seed)
    split = ar["feat"] >= 0
    x = np.empty((n, nf))
    for j in range(nf):
        at = split & (ar["feat"] == j)
        cand = [np.nan, 0.0, 1e-40, -1e-40, 1.0, -1.0, np.inf, -np.inf, 1e301, -1e301]
        num = at & (ar["kind"] == 0)
        thr = ar["thr"][num]
        cand += [*thr, *np.nextafter(thr, np.inf), *np.nextafter(thr, -np.inf)]
        for i in np.flatnonzero(at & (ar["kind"] == 1)):
            off, length = int(ar["cat_off"][i]), int(ar["cat_len"][i])
            words = ar["cat_bits"][off:off + length].astype(np.int64)
            codes = [32 * w + b for w in range(length) for b in range(32)
                     if (words[w] >> b) & 1]
            cand += [float(c) for c in codes] + [c + 1.0 for c in codes] + \
                [32.0 * length, (codes[-1] if codes else 0) + 0.5, -0.5, -2.0]
        x[:, j] = rng.choice(np.asarray(cand, dtype=float), size=n)
    x[0] = np.nan
    x[1] = 0.0
    if sample is not None and len(sample):
        x = np.concatenate([x, np.asarray(sample, dtype=np.float64).reshape(-1, nf)])
    return np.ascontiguousarray(x)
