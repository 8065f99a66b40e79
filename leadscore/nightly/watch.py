"""Drift, every night: each bucket's bin counts of every model feature and score (over all
rows and per segment value of the reference: lead source, dealer), saved beside the parts,
and ``_drift.json`` from their sums at the end of the run.

Each model is compared over the rows it scored, as :func:`leadscore.nightly.per_bucket.
score_features` scores them: the lead models over open leads, churn over open leads and
owners. A model's score is the probability column the job writes (for the time-to-order
models, after the monotone correction, which moves only the rows whose horizons cross).
Counts add up, so a bucket is counted once, when it is scored; its counts are written
(atomically) before its part is recorded in the manifest, so a resumed run sums the saved
counts of the buckets done before the crash with those of the buckets it scores, and writes
the same ``_drift.json`` as an uninterrupted run. Models without a reference in their
artifact (trained before drift was recorded), or whose training rows are not the rows the
job scores (the slot model's are contact attempts), are skipped with one log line.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from leadscore import atomic, drift
from leadscore.artifact import LeadModel
from leadscore.scoring.scorer import PROBA_COLUMN

log = logging.getLogger(__name__)

#: the output folder's drift report and the folder of per-bucket counts (readers of the
#: Parquet folder ignore names starting with ``_``)
DRIFT_FILE = "_drift.json"
COUNTS_DIR = "_drift-counts"


class Watch:
    """Tonight's drift counts for ``models`` (name → artifact), bucket by bucket."""

    def __init__(self, models: Mapping[str, LeadModel]):
        from leadscore.nightly.per_bucket import LEAD_MODELS

        self.references: dict[str, dict] = {}
        self.skipped: dict[str, str] = {}
        for name, model in models.items():
            ref = model.meta.get(drift.REFERENCE_KEY)
            if not ref:
                why = "its artifact has no drift reference (trained before drift was recorded)"
            elif ref.get("population") not in drift.NIGHTLY_POPULATIONS:
                why = (f"trained on {ref.get('population')} rows, not the open leads and "
                       "owners the job scores")
            elif name not in PROBA_COLUMN:
                why = "no probability column to compare its score with"
            else:
                self.references[name] = ref
                continue
            self.skipped[name] = why
            log.info("drift: %s skipped: %s", name, why)
        self._lead = {n: n in LEAD_MODELS for n in self.references}

    def count(self, feats: pd.DataFrame, scored: pd.DataFrame) -> dict:
        """One bucket's counts per model: ``{"rows", "features": {name: counts}, "score":
        counts, "segments": {column: {value: {"rows", "features", "score"}}}}`` over the rows
        the model scored (segments: the reference's values present in the bucket). A feature
        binned alike for several models (same bins) is binned once."""
        out: dict = {}
        if not self.references:
            return out
        is_open = feats["is_open"].to_numpy(dtype=bool) if len(feats) else np.zeros(0, bool)
        everyone = bool(is_open.all())
        cache: dict = {}
        for name, ref in self.references.items():
            lead = self._lead[name]
            rows = int(is_open.sum()) if lead else len(feats)
            slot = 1 if lead and not everyone else 2
            counts, bins = {}, {}
            for f, spec in ref["features"].items():
                if f not in feats.columns:
                    continue
                key = (f, tuple(spec.get("levels") or spec["edges"]), "levels" in spec)
                got = cache.get(key)
                if got is None:
                    got = cache[key] = [drift.bins_of(feats[f], spec), None, None]
                if got[slot] is None:
                    idx = got[0][is_open] if slot == 1 else got[0]
                    got[slot] = np.bincount(idx, minlength=drift.n_bins(spec)).tolist()
                counts[f] = got[slot]
                bins[f] = (key, got[0])
            p = drift.as_float(scored[PROBA_COLUMN[name]]) if len(scored) else np.zeros(0)
            scored_ok = ~np.isnan(p)
            p = p[scored_ok]
            score_bins = drift.bins_of(p, ref["score"])
            score = np.bincount(score_bins, minlength=drift.n_bins(ref["score"])).tolist()
            out[name] = {"rows": rows, "features": counts, "score": score}
            segments = ref.get("segments") or {}
            if segments:
                mask = is_open if slot == 1 else None
                out[name]["segments"] = self._segments(
                    segments, feats, scored, scored_ok, score_bins, ref, bins, mask, cache)
        return out

    @staticmethod
    def _segments(segments: Mapping, feats: pd.DataFrame, scored: pd.DataFrame,
                  scored_ok: np.ndarray, score_bins: np.ndarray, ref: Mapping,
                  bins: Mapping, mask: np.ndarray | None, cache: dict) -> dict:
        """A model's counts per segment value (``bins``: feature → (cache key, bins per
        row); ``mask``: the rows it scored, None for all). The score's rows are matched
        with the features' by lead."""
        out: dict = {}
        for column, ref_values in segments.items():
            if column not in feats.columns:
                continue
            values = list(ref_values)  # the reference's order: every bucket codes alike
            ckey = ("segment", column, tuple(values))
            codes = cache.get(ckey)
            if codes is None:
                codes = cache[ckey] = drift.segment_codes(feats[column], values)
            rows_codes = codes if mask is None else np.where(mask, codes, -1)
            n_rows = np.bincount(rows_codes[rows_codes >= 0], minlength=len(values))
            present = np.flatnonzero(n_rows)
            if not len(present):
                continue
            per = {values[i]: {"rows": int(n_rows[i]), "features": {}, "score": None}
                   for i in present}
            rkey = ("rows", ckey, mask is None)
            kept = cache.get(rkey)
            if kept is None:
                kept = cache[rkey] = drift.SegmentRows(rows_codes, len(values))
            for f, (fkey, b) in bins.items():
                skey = (fkey, ckey, mask is None)
                c = cache.get(skey)
                if c is None:
                    c = cache[skey] = kept.counts(b, drift.n_bins(ref["features"][f]))
                for i in present:
                    per[values[i]]["features"][f] = c[i].tolist()
            at = cache.get("scored_at")
            if at is None:  # each scored row's row among the features (every model alike)
                at = cache["scored_at"] = pd.Index(feats["lead_id"]).get_indexer(
                    scored["lead_id"])
            score_codes = np.where(at >= 0, codes[np.maximum(at, 0)], -1)[scored_ok]
            c = drift.segment_counts(score_bins, score_codes, len(values),
                                     drift.n_bins(ref["score"]))
            for i in present:
                per[values[i]]["score"] = c[i].tolist()
            out[column] = per
        return out

    # -- beside the parts ---------------------------------------------------------------------
    @staticmethod
    def counts_path(out: Path, bucket: int) -> Path:
        return Path(out) / COUNTS_DIR / f"bucket-{bucket:05d}.json"

    def save(self, out: Path, bucket: int, counts: dict) -> None:
        """Write a bucket's counts (atomically): before its part is recorded."""
        path = self.counts_path(out, bucket)
        path.parent.mkdir(exist_ok=True)
        atomic.write_text(path, json.dumps(counts, separators=(",", ":")))

    def report(self, out: Path, buckets: Iterable[int],
               alert: float = drift.DEFAULT_ALERT) -> dict:
        """Sum the saved counts of ``buckets`` (the parts the manifest holds), compare each
        model with its reference, write ``_drift.json`` (atomically; left as it is when the
        same) and log the alerts as warnings (feature names only). Returns the report."""
        totals: dict[str, dict] = {}
        lacking = []
        for b in sorted(buckets):
            path = self.counts_path(out, b)
            if not path.is_file():
                lacking.append(b)
                continue
            for name, c in json.loads(path.read_text()).items():
                if name not in self.references:
                    continue
                t = totals.setdefault(name, {"rows": 0, "features": {}, "score": None})
                t["rows"] += c["rows"]
                t["score"] = _add(t["score"], c["score"])
                for f, v in c["features"].items():
                    t["features"][f] = _add(t["features"].get(f), v)
                _add_segments(t.setdefault("segments", {}), c.get("segments") or {})
        if lacking and self.references:  # parts written by a run that did not count drift
            log.warning("drift: %d of the parts have no drift counts (written by a run that "
                        "did not count them); the report covers the others", len(lacking))
        report: dict = {}
        for name, ref in self.references.items():
            got = totals.get(name, {"rows": 0, "features": {}, "score": None})
            if got["score"] is None:
                got["score"] = [0] * drift.n_bins(ref["score"])
            report[name] = drift.compare(ref, got, alert)
            if lacking:
                report[name]["buckets_without_counts"] = lacking
            if report[name]["alerts"]:
                log.warning("drift: %s: PSI >= %g for %s", name, alert,
                            describe(report[name]["alerts"]))
        for name, why in self.skipped.items():
            report[name] = {"skipped": why}
        path, text = Path(out) / DRIFT_FILE, json.dumps(report, indent=1)
        if not path.is_file() or path.read_text() != text:  # a no-op rerun touches nothing
            atomic.write_text(path, text)
        return report


def _add(a: list | None, b: list) -> list:
    return list(b) if a is None else [x + y for x, y in zip(a, b, strict=True)]


def _add_segments(total: dict, counts: Mapping) -> None:
    """Add a bucket's per-segment counts into ``total`` (both ``{column: {value: {"rows",
    "features", "score"}}}``)."""
    for column, values in counts.items():
        into = total.setdefault(column, {})
        for value, c in values.items():
            t = into.setdefault(value, {"rows": 0, "features": {}, "score": None})
            t["rows"] += c["rows"]
            t["score"] = _add(t["score"], c["score"])
            for f, v in c["features"].items():
                t["features"][f] = _add(t["features"].get(f), v)


def describe(alerts: list[str], shown: int = 8) -> str:
    """Alerts (largest PSI first) as one log line: the first ``shown`` and how many more are
    in ``_drift.json``, so a night where everything moved stays one readable line."""
    more = len(alerts) - shown
    head = ", ".join(alerts[:shown])
    return head if more <= 0 else f"{head} and {more} more (see {DRIFT_FILE})"


def alerts(report: Mapping) -> dict[str, list[str]]:
    """Per model, its alerts (models without any left out)."""
    return {m: r["alerts"] for m, r in report.items() if r.get("alerts")}
