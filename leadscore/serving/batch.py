"""Nightly rescoring: every open lead (and owner, for churn) through the champion models.

How it keeps its promises:
- **bounded memory**: the clean tables are split once into buckets of leads by a hash of
  ``lead_id`` (Parquet on disk); each bucket is featurised and scored alone, so memory follows
  the bucket size, not the number of leads;
- **nothing lost, nothing doubled**: each bucket's result is written to a hidden temp file and
  renamed to ``part-NNNNN.parquet`` (atomic on POSIX), then recorded in ``_manifest.json``
  (itself replaced atomically). Readers ignore ``_``/``.`` files, so they see whole parts only.
  A rerun after a crash skips the buckets the manifest holds and redoes the rest; a bucket
  written but not yet recorded is simply rewritten under the same name;
- **idempotent**: a finished run with the same inputs, cutoff, models and settings is a no-op
  unless ``force``; different inputs into the same folder need ``force`` (which clears it).

The per-bucket function :func:`score_bucket` is what the Spark engine runs per partition
(:mod:`leadscore.serving.spark`): both engines hand their buckets' results to the same part
writer here, so parts, manifest, resume and no-op rerun behave the same whichever engine ran.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from leadscore import contract
from leadscore.artifact import LeadModel
from leadscore.features import job
from leadscore.serving.scorer import ALL_MODELS, OUTPUT_COLUMNS, SLOT_MODEL, Scorer

log = logging.getLogger(__name__)

MANIFEST = "_manifest.json"
DEFAULT_BUCKET_LEADS = 50_000
ENGINES = ("duckdb", "spark")
LOAD_MEMORY_ENV = "LEADSCORE_DUCKDB_MEMORY"
DEFAULT_LOAD_MEMORY = "2GB"
_TMP_SUFFIX = ".tmp"
LEAD_MODELS = ("conversion", "contact", SLOT_MODEL)


@dataclass
class RescoreResult:
    out: Path
    rows: int
    buckets: int
    skipped_buckets: int
    seconds: float
    noop: bool
    quarantined: int
    model_versions: dict[str, str]


def score_bucket(con, as_of: pd.Timestamp, scorer: Scorer, reasons: int) -> pd.DataFrame:
    """Features and scores for the leads in ``con``'s leads/events/contacts tables."""
    feats = job.to_pandas(job.compute(con, [as_of]))
    feats = feats[feats["is_open"] | feats["is_owner"]].reset_index(drop=True)
    if feats.empty:
        return pd.DataFrame(columns=list(OUTPUT_COLUMNS))
    open_rows = feats[feats["is_open"]]
    owners = feats[~feats["is_open"]]
    parts = []
    if len(open_rows):
        parts.append(scorer.score(open_rows, reasons=reasons))
    if len(owners):
        parts.append(scorer.score(owners, reasons=reasons,
                                  only=set(ALL_MODELS) - set(LEAD_MODELS)))
    out = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    return out.sort_values("lead_id", kind="stable").reset_index(drop=True)


# --------------------------------------------------------------------------- batch TreeSHAP
#
# Reasons are exact TreeSHAP contributions (path-dependent, as LightGBM's ``pred_contrib`` and
# ``shap.TreeExplainer`` compute them). LightGBM re-derives every tree's Shapley weights row by
# row. With depth-limited trees they can be tabulated once per model instead (the idea of
# FastTreeSHAP v2): a leaf's contribution to each feature on its path depends on the row only
# through which of those features the row *follows* (satisfies every split on it along the
# path), a bitmask over at most ``depth`` features. So per leaf and per mask the contributions
# are computed once; a row then costs one pass over each tree's nodes (which way it goes) and one
# table look-up per leaf. Same values as ``pred_contrib`` up to summation order (~1e-15).
# Used when numba is importable and no leaf path has more than ``_SHAP_MAX_PATH`` distinct
# features; otherwise LightGBM's ``pred_contrib``.

_SHAP_MAX_PATH = 10
_K_ZERO = 1.0000000180025095e-35  # LightGBM's kZeroThreshold (1e-35f as a double)
_shap_kernel = None


def _leaf_tables(r: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Contributions of leaves that share ``d`` path features, for every follow-mask.

    ``r`` (leaves × d): per path feature, the product of the cover ratios of the path's splits
    on it; ``v``: the leaf values. Returns (leaves × 2^d × d): for mask B (bit k set when the
    row follows path feature k), the Shapley value of feature k in the leaf's term
    ``v · Π_j (j ∈ S ? 1[j ∈ B] : r_j)``, which is
    ``v · (1[k ∈ B] − r_k) · Σ_{S ⊆ B∖{k}} |S|!(d−|S|−1)!/d! · Π_{j ∉ S, j ≠ k} r_j``.
    """
    n, d = r.shape
    m = 1 << d
    masks = np.arange(m)
    bits = ((masks[:, None] >> np.arange(d)[None, :]) & 1).astype(bool)  # (m, d)
    pop = bits.sum(axis=1)
    q = np.ones((n, m))  # q[:, S] = Π_{j ∉ S} r_j
    for j in range(d):
        q *= np.where(bits[None, :, j], 1.0, r[:, j][:, None])
    w = np.array([math.factorial(k) * math.factorial(d - k - 1) / math.factorial(d)
                  for k in range(d)] + [0.0])
    out = np.empty((n, m, d))
    for k in range(d):
        a = np.where(bits[None, :, k], 0.0, w[pop][None, :] * q[:, masks | (1 << k)])
        for i in range(d):  # subset sums over the other features: a[S] = Σ_{T ⊆ S} a[T]
            hi = masks[bits[:, i]]
            a[:, hi] += a[:, hi ^ (1 << i)]
        out[:, :, k] = v[:, None] * (bits[None, :, k] - r[:, k][:, None]) * a
    return out


class _ShapTables:
    """A model's trees in flat pre-order arrays, with every leaf's contribution table."""

    def __init__(self, booster):
        dump = booster.dump_model()
        self.n_features = len(dump["feature_names"])
        cols = ("feat", "thr", "kind", "miss", "defl", "left", "right", "slot", "leaf_d",
                "leaf_sf", "leaf_tab", "cat_off", "cat_len")
        a: dict[str, list] = {c: [] for c in cols}
        cat_bits: list[int] = []
        slot_feat: list[int] = []
        leaves_by_d: dict[int, list[tuple[int, list[float], float]]] = {}
        tree_start: list[int] = []
        self.base = 0.0
        self.max_path = 0

        def walk(node, feats: list[int], ratios: list[float], leaves: list) -> int:
            i = len(a["feat"])
            for c in cols:
                a[c].append(0)
            if "leaf_index" in node:
                a["feat"][i] = -1
                a["leaf_d"][i] = len(feats)
                a["leaf_sf"][i] = len(slot_feat)
                slot_feat.extend(feats)
                leaves_by_d.setdefault(len(feats), []).append((i, ratios, node["leaf_value"]))
                leaves.append((node["leaf_index"], node["leaf_count"], node["leaf_value"]))
                self.max_path = max(self.max_path, len(feats))
                return i
            f = node["split_feature"]
            k = feats.index(f) if f in feats else len(feats)
            a["feat"][i], a["slot"][i] = f, k
            a["defl"][i] = int(bool(node["default_left"]))
            if node["decision_type"] == "==":
                a["kind"][i] = 1
                cats = [int(c) for c in str(node["threshold"]).split("||")]
                words = [0] * (max(cats) // 32 + 1)
                for c in cats:
                    words[c // 32] |= 1 << (c % 32)
                a["cat_off"][i], a["cat_len"][i] = len(cat_bits), len(words)
                cat_bits.extend(words)
            else:
                a["thr"][i] = float(node["threshold"])
                a["miss"][i] = {"None": 0, "Zero": 1, "NaN": 2}[node["missing_type"]]
            for side in ("left_child", "right_child"):
                child = node[side]
                ratio = child.get("leaf_count", child.get("internal_count")) / \
                    node["internal_count"]
                fs, rs = list(feats), list(ratios)
                if k < len(fs):
                    rs[k] *= ratio
                else:
                    fs.append(f)
                    rs.append(ratio)
                a[side.split("_")[0]][i] = walk(child, fs, rs, leaves)
            return i

        for tree in dump["tree_info"]:
            root = tree["tree_structure"]
            if "leaf_index" in root:  # a constant tree adds its value to the base only
                self.base += root["leaf_value"]
                continue
            tree_start.append(len(a["feat"]))
            leaves: list[tuple[int, int, float]] = []
            walk(root, [], [], leaves)
            ev = 0.0
            for _, count, value in sorted(leaves):  # LightGBM's ExpectedValue, same order
                ev += count / root["internal_count"] * value
            self.base += ev
        tree_start.append(len(a["feat"]))
        if self.max_path > _SHAP_MAX_PATH:
            return
        table: list[np.ndarray] = []
        offset = 0
        for d, leaves_d in sorted(leaves_by_d.items()):
            idx = [i for i, _, _ in leaves_d]
            r = np.array([rs for _, rs, _ in leaves_d], dtype=float).reshape(len(idx), d)
            v = np.array([val for _, _, val in leaves_d], dtype=float)
            t = _leaf_tables(r, v).reshape(len(idx), -1)
            for row, i in enumerate(idx):
                a["leaf_tab"][i] = offset + row * t.shape[1]
            offset += t.size
            table.append(t.ravel())
        ints = ("feat", "kind", "miss", "defl", "left", "right", "slot", "leaf_d", "leaf_sf",
                "cat_off", "cat_len")
        self.arrays = {c: np.asarray(a[c], dtype=np.int64) for c in ints}
        self.arrays.update(
            leaf_tab=np.asarray(a["leaf_tab"], dtype=np.int64),
            thr=np.asarray(a["thr"], dtype=np.float64),
            tree_start=np.asarray(tree_start, dtype=np.int64),
            slot_feat=np.asarray(slot_feat or [0], dtype=np.int64),
            cat_bits=np.asarray(cat_bits or [0], dtype=np.uint32),
            table=np.concatenate(table) if table else np.zeros(1),
        )

    @property
    def usable(self) -> bool:
        return self.max_path <= _SHAP_MAX_PATH


def _shap_pass(x, out, feat, thr, kind, miss, defl, left, right, slot, leaf_d, leaf_sf,
               leaf_tab, cat_off, cat_len, tree_start, slot_feat, cat_bits, table, base):
    """Adds every row's contributions to ``out`` (compiled by numba; see :func:`_kernel`).

    Per tree, nodes in pre-order: a node's mask has bit k cleared once the row has left the
    path at a split on path feature k; at a leaf, the mask picks the row of its table. Splits
    are decided exactly as LightGBM's ``NumericalDecision``/``CategoricalDecision``.
    """
    n_trees = tree_start.shape[0] - 1
    width = 0
    for t in range(n_trees):
        width = max(width, tree_start[t + 1] - tree_start[t])
    mask = np.zeros(width, dtype=np.int64)
    nf = out.shape[1] - 1
    n = x.shape[0]
    # blocks of rows, tree by tree: a tree's tables stay in cache while a block goes through
    for r0 in range(0, n, 256):
        r1 = min(n, r0 + 256)
        for t in range(n_trees):
            s0 = tree_start[t]
            for row in range(r0, r1):
                mask[0] = -1
                for i in range(s0, tree_start[t + 1]):
                    m = mask[i - s0]
                    if feat[i] < 0:  # a leaf
                        d = leaf_d[i]
                        b = m & ((1 << d) - 1)
                        o = leaf_tab[i] + b * d
                        sf = leaf_sf[i]
                        for k in range(d):
                            out[row, slot_feat[sf + k]] += table[o + k]
                        continue
                    fval = x[row, feat[i]]
                    if kind[i] == 1:  # categorical: in the split's category set goes left
                        go_left = False
                        if not np.isnan(fval):
                            c = int(fval)
                            if c >= 0:
                                w = c >> 5
                                if w < cat_len[i]:
                                    go_left = ((cat_bits[cat_off[i] + w] >> (c & 31)) & 1) == 1
                    else:
                        mt = miss[i]
                        if np.isnan(fval) and mt != 2:
                            fval = 0.0
                        zero = -1.0000000180025095e-35 <= fval <= 1.0000000180025095e-35
                        if (mt == 1 and zero) or (mt == 2 and np.isnan(fval)):
                            go_left = defl[i] == 1
                        else:
                            go_left = fval <= thr[i]
                    bit = np.int64(1) << slot[i]
                    if go_left:
                        mask[left[i] - s0] = m
                        mask[right[i] - s0] = m & ~bit
                    else:
                        mask[left[i] - s0] = m & ~bit
                        mask[right[i] - s0] = m
        for row in range(r0, r1):
            out[row, nf] += base


def _kernel():
    """:func:`_shap_pass` compiled once per process (None when numba is not importable)."""
    global _shap_kernel
    if _shap_kernel is None:
        try:
            import numba
        except ImportError:  # pragma: no cover - numba comes with shap, a dependency
            _shap_kernel = False
        else:
            _shap_kernel = numba.njit(nogil=True, cache=True)(_shap_pass)
    return _shap_kernel or None


def _as_matrix(model: LeadModel, data) -> np.ndarray:
    """The model's input as LightGBM sees it (:meth:`LeadModel.matrix`), with LightGBM's
    predictor's rule that values within its zero threshold read as 0."""
    x = np.array(data if isinstance(data, np.ndarray) else model.matrix(data), dtype=np.float64)
    x[np.abs(x) <= _K_ZERO] = 0.0
    return x


def contributions(model, feats, num_threads: int = 1) -> np.ndarray:
    """Exact TreeSHAP contributions (rows × features+1, the last column the base value), as
    ``model.contributions`` gives them, by the tabulated pass when the trees allow it."""
    tables = getattr(model, "_batch_shap", None)
    if tables is None:
        tables = _ShapTables(model.booster)
        model._batch_shap = tables
    kernel = _kernel()
    if kernel is None or not tables.usable or tables.n_features != len(model.features):
        return LeadModel.contributions(model, feats, num_threads=num_threads)
    x = _as_matrix(model, feats)
    out = np.zeros((len(x), tables.n_features + 1))
    arr = tables.arrays
    args = (arr["feat"], arr["thr"], arr["kind"], arr["miss"], arr["defl"], arr["left"],
            arr["right"], arr["slot"], arr["leaf_d"], arr["leaf_sf"], arr["leaf_tab"],
            arr["cat_off"], arr["cat_len"], arr["tree_start"], arr["slot_feat"],
            arr["cat_bits"], arr["table"], tables.base)
    chunks = [c for c in np.array_split(np.arange(len(x)), max(1, num_threads)) if len(c)]
    if len(chunks) <= 1:
        kernel(x, out, *args)
    else:  # the kernel releases the GIL: one thread per slice of rows
        from concurrent.futures import ThreadPoolExecutor

        views = [(x[c[0]:c[-1] + 1], out[c[0]:c[-1] + 1]) for c in chunks]
        with ThreadPoolExecutor(len(views)) as pool:
            list(pool.map(lambda v: kernel(v[0], v[1], *args), views))
    return out


class _BatchShapModel(LeadModel):
    """The same artifact; its contributions come from :func:`contributions`."""

    def contributions(self, data, num_threads: int = 1) -> np.ndarray:
        return contributions(self, data, num_threads=num_threads)


def batch_scorer(scorer: Scorer) -> Scorer:
    """``scorer`` with the batch TreeSHAP for its reasons (same models, versions and rules)."""
    models = {}
    for name, m in scorer.models.items():
        if isinstance(m, _BatchShapModel) or not isinstance(m, LeadModel):
            models[name] = m
            continue
        bm = _BatchShapModel(**{f.name: getattr(m, f.name) for f in dataclasses.fields(m)})
        if hasattr(m, "_batch_shap"):
            bm._batch_shap = m._batch_shap
        models[name] = bm
    return Scorer(models, num_threads=scorer.num_threads, rules=scorer.rules)


def _fmt_types(df: pd.DataFrame) -> pd.DataFrame:
    """Stable column types so every part has one schema (null columns included), whichever
    engine produced the rows: timestamps are pinned to microseconds (DuckDB's unit), so an
    all-null column does not fall back to nanoseconds in one part and not in another."""
    df = df.copy()
    for c in ("p_convert", "p_inquiry", "p_response", "p_churn"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    df["lead_score"] = pd.to_numeric(df["lead_score"], errors="coerce").astype("Int64")
    for c in ("lead_id", "dealer_id", "grade", "contact_urgency", "best_channel", "reasons",
              "model_versions"):
        df[c] = df[c].astype("string")
    for c in ("as_of", "best_slot_start"):
        df[c] = pd.to_datetime(df[c], utc=True).astype("datetime64[us, UTC]")
    return df[list(OUTPUT_COLUMNS)]


def part_schema():
    """The Arrow schema of every part (what :func:`_fmt_types` makes of an empty frame)."""
    import pyarrow as pa

    empty = _fmt_types(pd.DataFrame({c: [] for c in OUTPUT_COLUMNS}))
    return pa.Schema.from_pandas(empty, preserve_index=False).remove_metadata()


def _write_part(out: Path, bucket: int, scored: pd.DataFrame) -> int:
    """Write one bucket's rows as ``part-NNNNN.parquet``: to a hidden temp file first, then
    renamed (atomic on POSIX), so a reader never sees half a part. Returns the row count."""
    part = out / f"part-{bucket:05d}.parquet"
    tmp = out / f".{part.name}{_TMP_SUFFIX}"
    _fmt_types(scored).to_parquet(tmp, index=False)
    os.replace(tmp, part)
    return len(scored)


def _score_embedded(work: Path, buckets: Sequence[int], as_of: pd.Timestamp, scorer: Scorer,
                    reasons: int):
    """The embedded engine: buckets one after another in this process."""
    for b in buckets:
        con = bucket_connection(work, b)
        try:
            yield b, score_bucket(con, as_of, scorer, reasons)
        finally:
            con.close()


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _run_key(ds: contract.Dataset, as_of: pd.Timestamp, versions: dict, n_buckets: int,
             reasons: int) -> str:
    counts = ds.con.execute(
        "SELECT (SELECT count(*) FROM leads), (SELECT count(*) FROM events), "
        "(SELECT count(*) FROM contacts), (SELECT max(ts)::VARCHAR FROM events), "
        "(SELECT sum(hash(lead_id, ts, event_type)) FROM events)::VARCHAR"
    ).fetchone()
    blob = json.dumps([list(map(str, counts)), str(as_of), versions, n_buckets, reasons])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _split_buckets(ds: contract.Dataset, work: Path, n_buckets: int) -> None:
    """Write the clean tables to Parquet partitioned by lead bucket, once per run."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    for table in ("leads", "events", "contacts"):
        ds.con.execute(
            f"COPY (SELECT *, (hash(lead_id) % {n_buckets})::INT AS bucket FROM {table}) "
            f"TO '{work / table}' (FORMAT parquet, PARTITION_BY (bucket))"
        )


def bucket_connection(work: Path, bucket: int, threads: int = 2):
    """A DuckDB connection whose leads/events/contacts are one bucket of the split tables."""
    con = contract.connect(threads=threads)
    for table in ("leads", "events", "contacts"):
        files = list((work / table / f"bucket={bucket}").glob("*.parquet"))
        if files:
            paths = ", ".join(f"'{p}'" for p in files)
            con.execute(f"CREATE VIEW {table} AS SELECT * EXCLUDE (bucket) "
                        f"FROM read_parquet([{paths}])")
        else:
            contract._empty_table(con, table)
    return con


class _Progress:
    """tqdm on a terminal; a plain log line per bucket with rate and ETA otherwise."""

    def __init__(self, total: int, done: int):
        self.total, self.done, self.rows, self.t0 = total, done, 0, time.perf_counter()
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, unit="bucket", desc="rescore")

    def step(self, rows: int) -> None:
        self.done += 1
        self.rows += rows
        if self.bar is not None:
            self.bar.set_postfix(rows=self.rows)
            self.bar.update(1)
            return
        el = time.perf_counter() - self.t0
        rate = self.rows / el if el > 0 else 0.0
        left = self.total - self.done
        eta = el / max(self.done, 1) * left
        log.warning("rescore: bucket %d/%d, %d rows, %.0f rows/s, ETA %.0fs",
                    self.done, self.total, self.rows, rate, eta)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def rescore(
    data_dir: Path,
    as_of: pd.Timestamp,
    out: Path,
    *,
    models: Sequence[str] = ALL_MODELS,
    reasons: int = 3,
    bucket_leads: int = DEFAULT_BUCKET_LEADS,
    force: bool = False,
    scorer: Scorer | None = None,
    engine: str = "duckdb",
) -> RescoreResult:
    """Score every open lead (and owner, for churn) at ``as_of`` into the Parquet folder ``out``.

    The inputs are validated in a DuckDB capped at ``LEADSCORE_DUCKDB_MEMORY`` (default
    ``DEFAULT_LOAD_MEMORY``) that spills to a hidden folder next to ``out``, so memory stays
    bounded whatever the size of the inputs.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
    out = Path(out)
    spill = out.parent / f".{out.name}.duckdb-tmp"
    shutil.rmtree(spill, ignore_errors=True)
    try:
        return _rescore(data_dir, as_of, out, models=models, reasons=reasons,
                        bucket_leads=bucket_leads, force=force, scorer=scorer, engine=engine,
                        spill=spill)
    finally:
        shutil.rmtree(spill, ignore_errors=True)


def _load_connection(spill: Path):
    """The validation connection: memory-capped, spilling to ``spill``."""
    spill.mkdir(parents=True, exist_ok=True)
    con = contract.connect(memory_limit=os.environ.get(LOAD_MEMORY_ENV, DEFAULT_LOAD_MEMORY))
    con.execute(f"SET temp_directory={contract._lit(str(spill))}")
    return con


def _rescore(
    data_dir: Path,
    as_of: pd.Timestamp,
    out: Path,
    *,
    models: Sequence[str] = ALL_MODELS,
    reasons: int = 3,
    bucket_leads: int = DEFAULT_BUCKET_LEADS,
    force: bool = False,
    scorer: Scorer | None = None,
    engine: str = "duckdb",
    spill: Path,
) -> RescoreResult:
    t0 = time.perf_counter()
    data_dir, out = Path(data_dir), Path(out)
    as_of = pd.Timestamp(as_of)
    as_of = as_of.tz_localize("UTC") if as_of.tzinfo is None else as_of.tz_convert("UTC")
    ds = contract.load(data_dir, quarantine_dir=data_dir / "quarantine",
                       con=_load_connection(spill))
    quarantined = sum(r.n_quarantined for r in ds.reports.values())
    if scorer is None:
        scorer = Scorer.from_registry(models, num_threads=2)
    if reasons > 0:
        scorer = batch_scorer(scorer)
    n_leads = ds.con.execute("SELECT count(*) FROM leads").fetchone()[0]
    n_buckets = max(1, math.ceil(n_leads / bucket_leads))
    key = _run_key(ds, as_of, scorer.versions, n_buckets, reasons)

    manifest_path = out / MANIFEST
    manifest = None
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("run_key") != key:
            if not force:
                raise FileExistsError(
                    f"{out} holds a rescoring of other inputs/cutoff/models "
                    f"(run {manifest.get('run_key')}); use --force to replace it"
                )
            manifest = None
        elif force:
            manifest = None
        elif manifest.get("complete"):
            log.warning("rescore: %s is already complete for these inputs: nothing to do", out)
            ds.con.close()
            return RescoreResult(out, manifest["rows"], n_buckets, n_buckets,
                                 time.perf_counter() - t0, True, quarantined, scorer.versions)
    if manifest is None:
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        manifest = {"run_key": key, "as_of": str(as_of), "buckets": n_buckets,
                    "models": scorer.versions, "parts": {}, "complete": False}
        _atomic_write_text(manifest_path, json.dumps(manifest, indent=1))

    done = {int(b) for b in manifest["parts"]}
    todo = [b for b in range(n_buckets) if b not in done]
    for stale in out.glob(f".part-*{_TMP_SUFFIX}"):  # left by a run that was killed mid-write
        stale.unlink()
    work = out / "_work"
    if todo:
        _split_buckets(ds, work, n_buckets)
    ds.con.close()
    if engine == "spark":
        from leadscore.serving import spark

        results = spark.rescore_buckets(work, todo, as_of, scorer, reasons)
    else:
        results = _score_embedded(work, todo, as_of, scorer, reasons)
    progress = _Progress(n_buckets, len(done))
    try:
        for b, scored in results:  # in completion order; Spark runs several at once
            n = _write_part(out, b, scored)
            manifest["parts"][str(b)] = {"file": f"part-{b:05d}.parquet", "rows": n}
            _atomic_write_text(manifest_path, json.dumps(manifest, indent=1))
            progress.step(n)
    finally:
        results.close()  # stops the Spark jobs still running if writing failed
        progress.close()
    rows = sum(p["rows"] for p in manifest["parts"].values())
    manifest.update({"complete": True, "rows": rows})
    _atomic_write_text(manifest_path, json.dumps(manifest, indent=1))
    if work.exists():
        shutil.rmtree(work)
    return RescoreResult(out, rows, n_buckets, len(done), time.perf_counter() - t0, False,
                         quarantined, scorer.versions)


def reasons_as_sentences(reasons_json: str | None) -> str:
    """``reasons`` JSON → "sentence; sentence" for CRMs that import CSV."""
    if not reasons_json:
        return ""
    return "; ".join(r["sentence"] for r in json.loads(reasons_json))


def export_csv(parquet_dir: Path, csv_path: Path) -> int:
    """The same columns as Parquet, UTF-8, reasons as a readable sentence list."""
    df = pd.read_parquet(parquet_dir)
    df["reasons"] = df["reasons"].map(reasons_as_sentences)
    tmp = csv_path.with_name(f".{csv_path.name}.tmp")
    df.sort_values("lead_id").to_csv(tmp, index=False, encoding="utf-8")
    os.replace(tmp, csv_path)
    return len(df)
