"""The previous night's run a rescoring compares with (``rescore --previous``).

A run is a folder of parts plus ``_manifest.json`` (:mod:`leadscore.nightly.batch`). Named
explicitly, it must be complete and readable (else :class:`~leadscore.contract.ContractError`
naming it: the CLI exits 2); found automatically among ``--out``'s siblings, the complete one
with the latest ``as_of`` before tonight's is taken, and one that cannot be read is skipped
with a warning. Only the written ``lead_id``/``lead_score`` columns are read: the deltas are
differences of written scores.

The changes explain a delta with the conversion model's features at both cutoffs. Each run
keeps the features it scored its leads with (``_changes-features/``, one file per bucket), so
the next night reads the previous ones instead of recomputing them: cheaper, and the previous
side is then exactly what the previous score was computed from, even when events dated before
that cutoff arrived since. A run without them (the Spark engine's, or an older one) is
recomputed from the kept rollups, for the leads whose score rose or fell only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from pyarrow import feather

from leadscore import atomic, contract
from leadscore.features import catalog as cat
from leadscore.scoring import changes
from leadscore.scoring.scorer import Scorer

log = logging.getLogger(__name__)

MANIFEST = "_manifest.json"
#: the features each run scored its leads with, kept for the next night's changes
FEATURES_DIR = "_changes-features"


def features_path(out: Path, bucket: int) -> Path:
    return Path(out) / FEATURES_DIR / f"bucket-{bucket:05d}.arrow"


def save_features(out: Path, bucket: int, feats: pd.DataFrame,
                  features: Sequence[cat.Feature]) -> None:
    """Keep the open leads' rows of ``feats`` (the leads a ``lead_score`` is written for;
    their ``features`` only), atomically, before the bucket's part is recorded: a resumed run
    has them for every recorded part. Arrow IPC, compressed, read memory-mapped: the next
    night takes a few rows of each file, not all of them."""
    rows = feats.loc[feats["is_open"].to_numpy(dtype=bool),
                     ["lead_id", *(f.name for f in features if f.name in feats.columns)]]
    table = pa.Table.from_pandas(rows, preserve_index=False)
    path = features_path(out, bucket)
    path.parent.mkdir(exist_ok=True)
    atomic.write_with(path, lambda tmp: feather.write_feather(table, tmp, compression="zstd"))


class Stored:
    """A previous run's kept features, found by lead id whatever bucket holds them (the
    bucketing may differ between the nights); only the lead ids are read up front."""

    def __init__(self, files: list[Path]):
        self.files = files
        ids = [feather.read_table(f, columns=["lead_id"], memory_map=True).column("lead_id")
               for f in files]
        every = pd.Index(pa.chunked_array(
            [c.cast(pa.string()) for c in ids], pa.string()).to_numpy(zero_copy_only=False))
        first = ~every.duplicated()  # one row per lead and run; a copy is the same lead's
        self.index, self.row = every[first], np.flatnonzero(first)
        sizes = [len(c) for c in ids]
        self.file_of = np.repeat(np.arange(len(files)), sizes)
        self.start = np.concatenate([[0], np.cumsum(sizes)])[:-1]

    def rows(self, lead_ids: Sequence[str]) -> pd.DataFrame:
        """The kept feature rows of ``lead_ids`` (those without one left out)."""
        # the index's own dtype: another one would cast the whole index on every call
        at = self.index.get_indexer(pd.Index(list(lead_ids), dtype=self.index.dtype))
        at = np.sort(self.row[at[at >= 0]])
        parts = [feather.read_table(self.files[f], memory_map=True).take(
                     pa.array(at[self.file_of[at] == f] - self.start[f]))
                 for f in np.unique(self.file_of[at])]
        if not parts:
            return feather.read_table(self.files[0], memory_map=True).slice(0, 0).to_pandas()
        return pa.concat_tables(parts, promote_options="permissive").to_pandas()


@dataclass
class Previous:
    path: Path
    as_of: pd.Timestamp
    run_key: str
    models: dict
    #: the written ``lead_score`` by ``lead_id`` (leads with a score only)
    scores: pd.Series
    #: the features the run scored with, when it kept them for every part
    stored: Stored | None = None

    def describe(self) -> dict:
        """What this run's manifest records about it."""
        return {"path": str(self.path.resolve()), "as_of": str(self.as_of),
                "run_key": self.run_key}


def _manifest(path: Path) -> dict:
    try:
        m = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise contract.ContractError(f"{path}: not a rescore output (no {MANIFEST})") from None
    except (OSError, ValueError) as e:
        raise contract.ContractError(f"{path / MANIFEST}: unreadable ({e})") from None
    if not isinstance(m, dict) or not m.get("complete"):
        raise contract.ContractError(f"{path}: an incomplete rescore run (its manifest is not "
                                     f"complete); finish it or name another --previous")
    if "as_of" not in m:
        raise contract.ContractError(f"{path / MANIFEST}: no as_of")
    return m


def load(path: Path) -> Previous:
    """A complete previous run's scores, or ContractError naming what is wrong with it."""
    path = Path(path)
    m = _manifest(path)
    try:
        as_of = pd.Timestamp(m["as_of"])
        files = [path / p["file"] for p in m.get("parts", {}).values()]
        frames = [pd.read_parquet(f, columns=["lead_id", "lead_score"]) for f in files]
    except Exception as e:  # a part missing or damaged, a column absent
        raise contract.ContractError(f"{path}: unreadable rescore output ({e})") from None
    as_of = as_of.tz_localize("UTC") if as_of.tzinfo is None else as_of.tz_convert("UTC")
    df = (pd.concat(frames, ignore_index=True) if frames
          else pd.DataFrame({"lead_id": [], "lead_score": []}))
    df = df[df["lead_score"].notna()]
    scores = pd.Series(pd.array(df["lead_score"], dtype="Int64"),
                       index=df["lead_id"].astype(str).to_numpy())
    kept = [features_path(path, int(b)) for b in m.get("parts", {})]
    stored = None
    if kept and all(f.is_file() for f in kept):
        try:
            stored = Stored(kept)
        except Exception as e:  # damaged: recomputed instead, as for a run without them
            log.warning("rescore: %s: its kept features are unreadable (%s); the changes "
                        "recompute them", path, e)
    return Previous(path, as_of, str(m.get("run_key")), m.get("models") or {}, scores,
                    stored)


def discover(out: Path, as_of: pd.Timestamp) -> Path | None:
    """The sibling of ``out`` holding the complete run with the latest ``as_of`` before
    ``as_of`` (None: there is none). Folders that are not complete runs are passed over."""
    out = Path(out)
    best: tuple[pd.Timestamp, str] | None = None
    parent = out.parent
    if not parent.is_dir():
        return None
    for d in parent.iterdir():
        if d == out or not (d / MANIFEST).is_file():
            continue
        try:
            m = _manifest(d)
            t = pd.Timestamp(m["as_of"])
            t = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
        except (contract.ContractError, ValueError) as e:
            log.warning("rescore: %s passed over as the previous run: %s", d, e)
            continue
        if t < as_of and (best is None or (t, d.name) > best):
            best = (t, d.name)
    return parent / best[1] if best is not None else None


def resolve(out: Path, as_of: pd.Timestamp, previous: Path | bool | None) -> Previous | None:
    """The run to compare with: ``previous`` when a path (errors raised), else found beside
    ``out`` (unreadable: a warning and none); ``False``: none."""
    if previous is False:
        return None
    if previous is not None and previous is not True:
        prev = load(Path(previous))
        if prev.as_of >= as_of:
            raise contract.ContractError(
                f"{previous}: its as_of {prev.as_of} is not before this run's {as_of}")
        return prev
    found = discover(out, as_of)
    if found is None:
        log.info("rescore: no earlier run beside %s: every lead is new", out)
        return None
    try:
        prev = load(found)
    except contract.ContractError as e:
        log.warning("rescore: %s; comparing with no previous run", e)
        return None
    log.info("rescore: comparing with the previous run %s (as of %s)", found, prev.as_of)
    return prev


def needed_features(scorer: Scorer) -> list[cat.Feature]:
    """The feature definitions the conversion model reads (the id columns always come)."""
    model = scorer.models.get(changes.MODEL)
    if model is None:
        return []
    names = set(model.features)
    return [f for f in scorer.job_features if f.name in names]


def annotate(scored: pd.DataFrame, tonight: pd.DataFrame | None, prev: Previous | None,
             scorer: Scorer,
             featurize: Callable[[pd.Timestamp, Sequence[cat.Feature], Sequence[str]],
                                 pd.DataFrame],
             lang: str = "en") -> pd.DataFrame:
    """Tonight's ``scored`` rows of one bucket with ``score_delta``, ``trend`` and ``changes``.

    ``tonight``: the bucket's feature rows as scored (None: recomputed by ``featurize``);
    ``featurize(as_of, features, lead_ids)``: those leads' feature rows at a cutoff, called
    for the leads whose score rose or fell only."""
    model = scorer.models.get(changes.MODEL)
    feats = needed_features(scorer)

    def rows_at(as_of: pd.Timestamp, given: pd.DataFrame | None):
        def get(ids):
            got = given if given is not None else featurize(as_of, feats, list(ids))
            return got[got["lead_id"].astype(str).isin(ids)]
        return get

    has_prev = prev is not None and model is not None
    if has_prev and prev.stored is not None:
        at_prev = prev.stored.rows
    else:
        at_prev = rows_at(prev.as_of, None) if has_prev else None
    cols = changes.compare(
        scored, prev.scores if prev is not None else None, at_prev,
        rows_at(pd.Timestamp(scored["as_of"].iloc[0]), tonight) if has_prev else None,
        model, lang=lang, num_threads=scorer.num_threads)
    out = scored.copy()
    for c in ("score_delta", "trend", "changes"):
        out[c] = cols[c].to_numpy()
    return out
