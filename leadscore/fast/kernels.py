"""LightGBM's trees compiled to flat arrays for numba: exact TreeSHAP several times faster
than ``pred_contrib``, and raw scores without ``Booster.predict``'s per-call cost. Used only
through :class:`leadscore.fast.Accelerated`, which checks them against LightGBM per model.

Reasons are exact TreeSHAP contributions (path-dependent, as LightGBM's ``pred_contrib`` and
``shap.TreeExplainer`` compute them). LightGBM re-derives every tree's Shapley weights row by
row. With depth-limited trees they can be tabulated once per model instead (the idea of
FastTreeSHAP v2): a leaf's contribution to each feature on its path depends on the row only
through which of those features the row *follows* (satisfies every split on it along the
path), a bitmask over at most ``depth`` features. So per leaf and per mask the contributions
are computed once; a row then costs one pass over each tree's nodes (which way it goes) and one
table look-up per leaf. Batches go further (:func:`_shared_pass`): a row's contributions in a
tree depend only on which way it goes at each split, and most rows share their way with
others, so each tree's distinct ways are computed once. Same values as ``pred_contrib`` up to
summation order (~1e-14). Taken when no leaf path has more than ``_SHAP_MAX_PATH``
distinct features.

Four kernels, each the fastest for what a user waits on: :func:`_shap_pass` (a request's
few rows of reasons), :func:`_shared_pass` (the nightly batch's reasons), :func:`_heap_pass`
(raw scores: level by level through complete binary trees) and :func:`_predict_runs_pass`
(a lead's slot candidates as one set per tree). Leaf values are summed in LightGBM's order,
so raw scores are its very doubles.
"""

from __future__ import annotations

import itertools
import math
import threading

import numpy as np

_SHAP_MAX_PATH = 10
#: LightGBM's kZeroThreshold: its predictor reads values within it as 0.0
_ZERO = 1.0000000180025095e-35
_kernels: dict | None = None
_trailing_zeros = None  # numba's count-trailing-zeros intrinsic, bound by _compile
_lock = threading.Lock()


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


class Tables:
    """A model's trees in flat pre-order arrays, with every leaf's contribution table."""

    def __init__(self, booster):
        dump = booster.dump_model()
        self.n_features = len(dump["feature_names"])
        self.refused = []  # what the kernels do not implement (LightGBM sums leaf values)
        if dump.get("num_tree_per_iteration", 1) != 1:
            self.refused.append("several trees per iteration")
        if dump.get("average_output"):
            self.refused.append("averaged tree output (boosting: rf)")
        if any(t.get("is_linear") for t in dump["tree_info"]) or \
                "is_linear=1" in booster.model_to_string(num_iteration=-1):
            self.refused.append("linear leaves (linear_tree)")
        cols = ("feat", "thr", "kind", "miss", "defl", "left", "right", "slot", "leaf_d",
                "leaf_sf", "cat_off", "cat_len", "value")
        a: dict[str, list] = {c: [] for c in cols}
        cat_bits: list[int] = []
        slot_feat: list[int] = []
        leaves_by_d: dict[int, list[tuple[int, list[float], float]]] = {}
        tree_start: list[int] = []
        self.base = 0.0  # expected value of the model: TreeSHAP's last column
        self.max_path = 0

        def walk(node, feats: list[int], ratios: list[float], leaves: list) -> int:
            i = len(a["feat"])
            for c in cols:
                a[c].append(0)
            if "split_feature" not in node:  # a leaf (a one-leaf tree's has no index)
                a["feat"][i] = -1
                a["value"][i] = node["leaf_value"]
                a["leaf_d"][i] = len(feats)
                a["leaf_sf"][i] = len(slot_feat)
                slot_feat.extend(feats)
                leaves_by_d.setdefault(len(feats), []).append((i, ratios, node["leaf_value"]))
                leaves.append((node.get("leaf_index", 0), node["leaf_count"], node["leaf_value"]))
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
            tree_start.append(len(a["feat"]))
            if "split_feature" not in root:  # constant: no contributions, its value in the base
                walk(root, [], [], [])
                self.base += root["leaf_value"]
                continue
            leaves: list[tuple[int, int, float]] = []
            walk(root, [], [], leaves)
            ev = 0.0
            for _, count, value in sorted(leaves):  # LightGBM's ExpectedValue, same order
                ev += count / root["internal_count"] * value
            self.base += ev
        tree_start.append(len(a["feat"]))
        ints = ("feat", "kind", "miss", "defl", "left", "right", "slot", "leaf_d", "leaf_sf",
                "cat_off", "cat_len")
        self.arrays = {c: np.asarray(a[c], dtype=np.int64) for c in ints}
        ar = self.arrays
        self.packed = (
            np.ascontiguousarray(np.stack([
                ar["feat"], ar["left"], ar["right"], ar["kind"] | (ar["miss"] << 1) |
                (ar["defl"] << 3), ar["cat_off"], ar["cat_len"]], axis=1), dtype=np.int32),
            np.where(ar["feat"] < 0, np.asarray(a["value"], dtype=np.float64),
                     np.asarray(a["thr"], dtype=np.float64)),
        )
        self.arrays.update(
            thr=np.asarray(a["thr"], dtype=np.float64),
            tree_start=np.asarray(tree_start, dtype=np.int64),
            cat_bits=np.asarray(cat_bits or [0], dtype=np.uint32),
        )
        self.shap = self._shap_layout(leaves_by_d, slot_feat) if self.usable else None
        self.heap = _heap_layout(self.arrays, self.packed[1])
        self.shared = _shared_layout(self.shap) if self.shap is not None else None

    def _shap_layout(self, leaves_by_d: dict, slot_feat: list[int]) -> tuple:
        """The arrays of :func:`_shap_pass`: per tree its splits, then its leaves, each leaf
        with its table and its path features. A table has ``2^d`` rows of ``width`` = the
        longest path's length, the columns past ``d`` zero and aimed at the base column: a
        single row then adds the same number of values at every leaf (no loop whose length
        the branch predictor has to guess), blocks of rows add only the first ``d``."""
        ar = self.arrays
        width = max(self.max_path, 1)
        nf = self.n_features
        table: list[np.ndarray] = []
        leaf_tab: dict[int, int] = {}
        offset = 0
        for d, leaves_d in sorted(leaves_by_d.items()):
            if d == 0:  # a constant tree's leaf: its value is in the base
                continue
            idx = [i for i, _, _ in leaves_d]
            r = np.array([rs for _, rs, _ in leaves_d], dtype=float).reshape(len(idx), d)
            v = np.array([val for _, _, val in leaves_d], dtype=float)
            t = np.zeros((len(idx), 1 << d, width))
            t[:, :, :d] = _leaf_tables(r, v)
            t = t.reshape(len(idx), -1)
            for row, i in enumerate(idx):
                leaf_tab[i] = offset + row * t.shape[1]
            offset += t.size
            table.append(t.ravel())
        feat, ts = ar["feat"], ar["tree_start"]
        flags = self.packed[0][:, 3]
        splits, thr, leaves, leaf_feat = [], [], [], []
        split_start, leaf_start = [0], [0]
        for t0, t1 in zip(ts[:-1].tolist(), ts[1:].tolist(), strict=True):
            for i in range(t0, t1):
                if feat[i] >= 0:
                    splits.append((feat[i], ar["left"][i] - t0, ar["right"][i] - t0, flags[i],
                                   ar["cat_off"][i], ar["cat_len"][i], ar["slot"][i], i - t0))
                    thr.append(ar["thr"][i])
                elif i in leaf_tab:
                    d, sf = int(ar["leaf_d"][i]), int(ar["leaf_sf"][i])
                    leaves.append((i - t0, leaf_tab[i], d, len(leaf_feat)))
                    leaf_feat += slot_feat[sf:sf + d] + [nf] * (width - d)
            split_start.append(len(splits))
            leaf_start.append(len(leaves))
        return (
            np.asarray(splits, dtype=np.int32).reshape(-1, 8),
            np.asarray(thr, dtype=np.float64),
            np.asarray(split_start, dtype=np.int64),
            np.asarray(leaves, dtype=np.int64).reshape(-1, 4),
            np.asarray(leaf_start, dtype=np.int64),
            np.asarray(leaf_feat or [0], dtype=np.int32),
            np.concatenate(table) if table else np.zeros(1),
            self.arrays["cat_bits"],
            float(self.base),
            int(max((ts[1:] - ts[:-1]).max(initial=1), 1)),
            width,
        )

    @property
    def usable(self) -> bool:
        return self.max_path <= _SHAP_MAX_PATH

    def unsupported(self) -> str:
        """Why the kernels cannot score these trees, or ''."""
        why = list(self.refused)
        if self.heap is None:
            why.append(f"trees deeper than {_HEAP_MAX_DEPTH} levels or a threshold that is not "
                       "finite (the level-by-level walk)")
        if not self.usable:
            why.append(f"a leaf's path has {self.max_path} distinct features (the tabulated "
                       f"TreeSHAP takes at most {_SHAP_MAX_PATH})")
        return "; ".join(why)


def _go_left(fval, thr, kind, miss, defl, cat_off, cat_len, cat_bits):
    """Whether a row goes left at a split: LightGBM's ``NumericalDecision`` and
    ``CategoricalDecision`` (a category in the split's set goes left; NaN and negatives
    right). Compiled inline into both kernels."""
    if -_ZERO <= fval <= _ZERO:
        fval = 0.0  # LightGBM's predictor reads values within its zero threshold as 0
    if kind == 1:
        if np.isnan(fval):
            return False
        c = int(fval)
        if c < 0:
            return False
        w = c >> 5
        return w < cat_len and ((cat_bits[cat_off + w] >> (c & 31)) & 1) == 1
    if np.isnan(fval) and miss != 2:
        fval = 0.0
    if (miss == 1 and fval == 0.0) or (miss == 2 and np.isnan(fval)):
        return defl == 1
    return fval <= thr


def _predict_runs_pass(lead, vals, vcols, out, node, thr, tree_start, cat_bits):
    """Adds the raw scores of runs of rows that agree on every column but ``vcols`` (a
    lead's candidate slots: only the slot columns differ), given as each run's row ``lead``
    (k x features; its ``vcols`` are not read) and the runs' values of ``vcols``, ``vals``
    (k x rows per run x len(vcols)); ``out`` gets k x rows per run. The runs' rows are never
    laid out in full.

    A run goes through each tree once, as a set of rows (a bitmask): a split on a shared
    column is decided from the run's ``lead`` row and the whole set follows it; a split on a
    varying column divides the set into the rows going left and right, and both parts go
    on. Which rows go left is found from the column's distinct values in the run, sorted
    once per run with the rows holding each (values within LightGBM's zero threshold read
    as 0.0, NaN apart): a numerical split sends left a prefix of them, plus NaN and zero
    as its missing-value rule says; a categorical one is decided per distinct value. Each
    row lands in exactly one leaf per tree, whose value it adds, trees in order: LightGBM's
    doubles. A lead's 117 candidates visit ~9 nodes per tree this way: an order of magnitude
    less than ``Booster.predict`` over the laid-out candidates."""
    k_runs, nf = lead.shape
    group = vals.shape[1]
    words = (group + 63) // 64
    nv = vcols.shape[0]
    slot = np.full(nf, -1, dtype=np.int64)
    for j in range(nv):
        slot[vcols[j]] = j
    one, none = np.uint64(1), np.uint64(0)
    dval = np.empty((nv, group))  # per varying column: distinct values, ascending
    dmask = np.zeros((nv, group, words), dtype=np.uint64)  # the rows holding each
    cum = np.zeros((nv, group + 1, words), dtype=np.uint64)  # rows holding the k smallest
    nan_rows = np.zeros((nv, words), dtype=np.uint64)
    zero_rows = np.zeros((nv, words), dtype=np.uint64)
    nd = np.zeros(nv, dtype=np.int64)
    most = 1
    for t in range(tree_start.shape[0] - 1):
        most = max(most, tree_start[t + 1] - tree_start[t])
    stack_node = np.empty(most + 1, dtype=np.int64)
    stack_set = np.empty((most + 1, words), dtype=np.uint64)
    cur = np.empty(words, dtype=np.uint64)
    every = np.empty(words, dtype=np.uint64)
    left = np.empty(words, dtype=np.uint64)
    z = _ZERO
    rows = group
    for w in range(words):
        every[w] = none
    for c in range(rows):
        every[c >> 6] |= one << np.uint64(c & 63)
    for g0 in range(k_runs):
        for j in range(nv):
            cnt = 0
            for w in range(words):
                nan_rows[j, w] = none
                zero_rows[j, w] = none
            for c in range(rows):
                v = vals[g0, c, j]
                bit = one << np.uint64(c & 63)
                if np.isnan(v):
                    nan_rows[j, c >> 6] |= bit
                    continue
                if -z <= v <= z:
                    v = 0.0
                k = 0
                while k < cnt and dval[j, k] != v:
                    k += 1
                if k == cnt:  # a new value: insert it in order
                    while k > 0 and dval[j, k - 1] > v:
                        dval[j, k] = dval[j, k - 1]
                        for w in range(words):
                            dmask[j, k, w] = dmask[j, k - 1, w]
                        k -= 1
                    dval[j, k] = v
                    for w in range(words):
                        dmask[j, k, w] = none
                    cnt += 1
                dmask[j, k, c >> 6] |= bit
            nd[j] = cnt
            for w in range(words):
                cum[j, 0, w] = none
            for k in range(cnt):
                for w in range(words):
                    cum[j, k + 1, w] = cum[j, k, w] | dmask[j, k, w]
                if dval[j, k] == 0.0:
                    for w in range(words):
                        zero_rows[j, w] = dmask[j, k, w]
        for t in range(tree_start.shape[0] - 1):
            stack_node[0] = tree_start[t]
            for w in range(words):
                stack_set[0, w] = every[w]
            sp = 1
            while sp > 0:
                sp -= 1
                i = stack_node[sp]
                for w in range(words):
                    cur[w] = stack_set[sp, w]
                while True:
                    f = node[i, 0]
                    if f < 0:  # a leaf: its value to each row of the set
                        v = thr[i]
                        for w in range(words):
                            word = cur[w]
                            while word != none:
                                out[g0, w * 64 + np.int64(_trailing_zeros(word))] += v
                                word &= word - one
                        break
                    flags = node[i, 3]
                    j = slot[f]
                    if j < 0:  # a shared column: the lead row decides
                        if _go_left(lead[g0, f], thr[i], flags & 1, (flags >> 1) & 3,
                                    flags >> 3, node[i, 4], node[i, 5], cat_bits):
                            i = node[i, 1]
                        else:
                            i = node[i, 2]
                        continue
                    if flags & 1:
                        for w in range(words):
                            left[w] = none
                        for k in range(nd[j]):  # NaN goes right
                            if _go_left(dval[j, k], thr[i], 1, 0, 0, node[i, 4], node[i, 5],
                                        cat_bits):
                                for w in range(words):
                                    left[w] |= dmask[j, k, w]
                    else:
                        th = thr[i]
                        lo, hi = 0, nd[j]
                        while lo < hi:  # how many distinct values are <= the threshold
                            mid = (lo + hi) >> 1
                            if dval[j, mid] <= th:
                                lo = mid + 1
                            else:
                                hi = mid
                        miss = (flags >> 1) & 3
                        defl = (flags >> 3) == 1
                        for w in range(words):
                            pre = cum[j, lo, w]
                            if miss == 0:  # NaN reads as 0.0
                                left[w] = pre | nan_rows[j, w] if th >= 0.0 else pre
                            elif miss == 2:  # NaN goes the default way
                                left[w] = pre | nan_rows[j, w] if defl else pre
                            else:  # zero (and NaN, read as zero) goes the default way
                                rest = pre & ~zero_rows[j, w]
                                left[w] = rest | zero_rows[j, w] | nan_rows[j, w] if defl \
                                    else rest
                    any_l = False
                    any_r = False
                    for w in range(words):
                        if cur[w] & left[w]:
                            any_l = True
                        if cur[w] & ~left[w]:
                            any_r = True
                    if any_l and any_r:  # the right part waits on the stack
                        stack_node[sp] = node[i, 2]
                        for w in range(words):
                            stack_set[sp, w] = cur[w] & ~left[w]
                            cur[w] &= left[w]
                        sp += 1
                        i = node[i, 1]
                    elif any_l:
                        i = node[i, 1]
                    else:
                        i = node[i, 2]


def _clean_rows(x, r0, r1, x0, xn):
    """Rows ``r0:r1`` of ``x`` as the numeric splits read them: ``x0`` the value with NaN
    and LightGBM's near-zero band as 0.0, ``xn`` 1 where it was NaN. Done once per row so a
    split is decided with arithmetic, not with branches the row's data would mispredict."""
    for row in range(r0, r1):
        for f in range(x.shape[1]):
            v = x[row, f]
            isn = np.isnan(v)
            xn[row - r0, f] = 1 if isn else 0
            small = -_ZERO <= v <= _ZERO
            x0[row - r0, f] = 0.0 if (isn or small) else v


def _shap_pass(x, out, splits, thr, split_start, leaves, leaf_start, leaf_feat, table,
               cat_bits, base, n_nodes, width):
    """Adds every row's contributions to ``out`` (compiled by numba; see :func:`_kernel`).

    Rows go in blocks, tree by tree (a tree's tables stay in cache while a block goes
    through). Per row, first the tree's splits in pre-order: a child's mask is its parent's
    with bit k cleared when the row leaves the path there (k: the split feature's slot on the
    path); each leaf's mask then picks the row of the leaf's table. Then per leaf and path
    feature, the block's rows add their table values: independent additions, where adding a
    row's leaves one after another would chain each addition to the last one on the same
    feature. Per row and feature the additions come in the same order either way.

    ``splits`` packs a split in one row (feature, left, right, kind | missing type | default
    left, category bitset offset and length, path slot, own index in the tree); ``leaves`` a
    leaf (index in the tree, table offset, path length, offset in ``leaf_feat``). Numeric
    splits are decided as LightGBM's ``NumericalDecision`` but without branches the row's
    data would mispredict; categorical ones by :func:`_go_left`.
    """
    n_trees = split_start.shape[0] - 1
    mask = np.zeros(n_nodes, dtype=np.int64)
    block = 64
    offs = np.zeros((n_nodes, block), dtype=np.int64)
    touch = 0.0
    nf = out.shape[1] - 1
    n = x.shape[0]
    x0 = np.empty((block, x.shape[1]))
    xn = np.empty((block, x.shape[1]), dtype=np.int64)
    for r0 in range(0, n, block):
        r1 = min(n, r0 + block)
        nr = r1 - r0
        _clean_rows(x, r0, r1, x0, xn)
        for t in range(n_trees):
            l0, l1 = leaf_start[t], leaf_start[t + 1]
            for rr in range(nr):
                row = r0 + rr
                mask[0] = -1
                for j in range(split_start[t], split_start[t + 1]):
                    m = mask[splits[j, 7]]
                    bit = np.int64(1) << splits[j, 6]
                    f = splits[j, 0]
                    flags = splits[j, 3]
                    if flags & 1:
                        go = np.int64(_go_left(x[row, f], thr[j], 1, 0, 0, splits[j, 4],
                                               splits[j, 5], cat_bits))
                    else:
                        miss = (flags >> 1) & 3
                        fv = x0[rr, f]
                        dflt = (np.int64(miss == 1) & np.int64(fv == 0.0)) | \
                            (np.int64(miss == 2) & xn[rr, f])
                        go = (dflt & (flags >> 3)) | ((1 - dflt) & np.int64(fv <= thr[j]))
                    mask[splits[j, 1]] = m & ~(bit * (1 - go))
                    mask[splits[j, 2]] = m & ~(bit * go)
                for q in range(l0, l1):
                    d = leaves[q, 2]
                    offs[q - l0, rr] = leaves[q, 1] + (mask[leaves[q, 0]] & ((1 << d) - 1)) * width
                if nr < 8:
                    # a request's row or few: the tables are cold, so first request all the
                    # tree's table rows at once (they wait for memory together, not one by
                    # one), then add each in full width
                    for q in range(l0, l1):
                        touch += table[offs[q - l0, rr]] + table[offs[q - l0, rr] + width - 1]
                    for q in range(l0, l1):
                        o, b = offs[q - l0, rr], leaves[q, 3]
                        for k in range(width):
                            out[row, leaf_feat[b + k]] += table[o + k]
            if nr < 8:
                continue
            for q in range(l0, l1):
                d, b = leaves[q, 2], leaves[q, 3]
                for k in range(d):
                    f = leaf_feat[b + k]
                    for rr in range(nr):
                        out[r0 + rr, f] += table[offs[q - l0, rr] + k]
        for row in range(r0, r1):
            out[row, nf] += base
    return touch


#: rows from which contributions go tree by tree with each tree's distinct ways computed once
#: (:func:`_shared_pass`); fewer take :func:`_shap_pass` (for one row the shared pass's set-up
#: costs more than it saves; the two break even at about this many rows)
_SHARED_MIN_ROWS = 4
#: Fibonacci hashing's multiplier (2^64 / golden ratio) as a signed 64-bit integer
_FIB = -7046029254386353131


def _shared_layout(shap: tuple) -> tuple | None:
    """The arrays of :func:`_shared_pass`: those of :func:`_shap_pass`, each leaf's path
    features renumbered within its tree (``leaf_local``), and each tree's features in that
    numbering (``tree_feat`` from ``tree_feat_start``). None when a tree has more than 64
    splits (a row's way through it is kept as one 64-bit word)."""
    (splits, thr, split_start, leaves, leaf_start, leaf_feat, table, cat_bits, base, n_nodes,
     width) = shap
    if len(split_start) > 1 and np.diff(split_start).max() > 64:
        return None
    leaf_local = np.zeros_like(leaf_feat)
    tree_feat: list[int] = []
    tree_feat_start = [0]
    for t in range(len(leaf_start) - 1):
        local: dict[int, int] = {}
        for q in range(leaf_start[t], leaf_start[t + 1]):
            d, b = int(leaves[q, 2]), int(leaves[q, 3])
            for k in range(d):
                leaf_local[b + k] = local.setdefault(int(leaf_feat[b + k]), len(local))
        tree_feat += list(local)
        tree_feat_start.append(len(tree_feat))
    return (splits, thr, split_start, leaves, leaf_start, leaf_local, table, cat_bits, base,
            n_nodes, width, np.asarray(tree_feat, dtype=np.int64),
            np.asarray(tree_feat_start, dtype=np.int64))


def _shared_pass(x, out, splits, thr, split_start, leaves, leaf_start, leaf_local, table,
                 cat_bits, base, n_nodes, width, tree_feat, tree_feat_start):
    """:func:`_shap_pass`'s contributions computed tree by tree over all rows, once per
    distinct way through the tree (compiled by numba; see :func:`_kernel`).

    A row's contributions in a tree depend on it only through which way it goes at each of
    the tree's splits (TreeSHAP reads nothing else of it), one bit per split. So per tree:
    every row's bits (a pass per split over a column, the columns transposed once); a hash
    of the bits gives each row the number of its way (the benchmark's 1M-lead night has
    13-23% of rows' ways distinct per tree within a bucket); the contributions of each
    distinct way from the leaf tables, in blocks whose additions do not wait on one another;
    then each row adds its way's contributions, feature by feature. Going tree by tree also
    keeps one tree's tables in cache, where :func:`_shap_pass` cycles through every tree's
    (tens of MB) for each block of rows. Per feature, a tree's leaves are summed first, then
    added to the row's total: the same values as :func:`_shap_pass` to ~1e-14."""
    n, nf = x.shape
    x0 = np.empty((nf, n))  # by feature: a split's pass reads one column
    xn = np.empty((nf, n), dtype=np.int8)
    _clean_rows(x, 0, n, x0.T, xn.T)
    total = np.zeros((nf + 1, n))
    bits = 1
    while (1 << bits) < 2 * n:
        bits += 1
    size = 1 << bits
    slot_key = np.zeros(size, dtype=np.int64)
    slot_tree = np.full(size, -1, dtype=np.int64)
    slot_way = np.zeros(size, dtype=np.int64)
    way_of = np.zeros(n, dtype=np.int64)
    key = np.zeros(n, dtype=np.int64)
    way_key = np.zeros(n, dtype=np.int64)
    n_trees = split_start.shape[0] - 1
    most_feats, most_leaves = 1, 1
    for t in range(n_trees):
        most_feats = max(most_feats, tree_feat_start[t + 1] - tree_feat_start[t])
        most_leaves = max(most_leaves, leaf_start[t + 1] - leaf_start[t])
    vals = np.zeros(most_feats * n)  # per tree feature, per way
    block = 64
    offs = np.zeros((most_leaves, block), dtype=np.int64)
    mask = np.zeros(n_nodes, dtype=np.int64)
    for t in range(n_trees):
        s0, s1 = split_start[t], split_start[t + 1]
        for r in range(n):
            key[r] = 0
        for j in range(s0, s1):
            f = splits[j, 0]
            flags = splits[j, 3]
            shift = j - s0
            th = thr[j]
            if flags & 1:
                for r in range(n):
                    go = 0
                    if xn[f, r] == 0:
                        go = np.int64(_go_left(x0[f, r], th, 1, 0, 0, splits[j, 4],
                                               splits[j, 5], cat_bits))
                    key[r] |= go << shift
            else:
                miss = (flags >> 1) & 3
                defl = np.int64(flags >> 3)
                on_zero = np.int64(miss == 1)
                on_nan = np.int64(miss == 2)
                for r in range(n):
                    fv = x0[f, r]
                    dflt = (on_zero & np.int64(fv == 0.0)) | (on_nan & np.int64(xn[f, r]))
                    go = (dflt & defl) | ((1 - dflt) & np.int64(fv <= th))
                    key[r] |= go << shift
        ways = 0
        for r in range(n):
            k = key[r]
            h = ((k * _FIB) >> (64 - bits)) & (size - 1)
            while True:
                if slot_tree[h] != t:
                    slot_tree[h] = t
                    slot_key[h] = k
                    slot_way[h] = ways
                    way_key[ways] = k
                    way_of[r] = ways
                    ways += 1
                    break
                if slot_key[h] == k:
                    way_of[r] = slot_way[h]
                    break
                h = (h + 1) & (size - 1)
        w0 = tree_feat_start[t]
        w = tree_feat_start[t + 1] - w0
        l0, l1 = leaf_start[t], leaf_start[t + 1]
        for i in range(w * n):
            vals[i] = 0.0
        for u0 in range(0, ways, block):
            u1 = min(ways, u0 + block)
            for u in range(u0, u1):
                k = way_key[u]
                mask[0] = -1
                for j in range(s0, s1):
                    go = (k >> (j - s0)) & 1
                    m = mask[splits[j, 7]]
                    bit = np.int64(1) << splits[j, 6]
                    mask[splits[j, 1]] = m & ~(bit * (1 - go))
                    mask[splits[j, 2]] = m & ~(bit * go)
                for q in range(l0, l1):
                    d = leaves[q, 2]
                    offs[q - l0, u - u0] = leaves[q, 1] + \
                        (mask[leaves[q, 0]] & ((1 << d) - 1)) * width
            for q in range(l0, l1):
                d, b = leaves[q, 2], leaves[q, 3]
                for k in range(d):
                    at = leaf_local[b + k] * n
                    for u in range(u0, u1):
                        vals[at + u] += table[offs[q - l0, u - u0] + k]
        for k in range(w):
            f = tree_feat[w0 + k]
            for r in range(n):
                total[f, r] += vals[k * n + way_of[r]]
    for r in range(n):
        for f in range(nf):
            out[r, f] += total[f, r]
        out[r, nf] += total[nf, r] + base


#: deepest tree the heap walk takes: a tree of depth d is laid out in 2^d - 1 splits and 2^d
#: leaves, so deeper trees (grown leaf-wise without a depth limit) are left to LightGBM
_HEAP_MAX_DEPTH = 10
#: the split kinds of the heap walk's columns (:func:`_heap_rows`), in their order
_PLAIN, _NAN_LEFT, _NAN_RIGHT, _ZERO_LEFT, _ZERO_RIGHT, _IN_SET, _CONST = range(7)


def _heap_layout(ar: dict, value: np.ndarray) -> tuple | None:
    """The arrays of :func:`_heap_pass`: each tree as a complete binary tree of its depth (a
    leaf above the bottom becomes splits that always go left, down to a copy of its value),
    every split a plain ``column <= threshold`` on a column of values prepared per row, so
    a row's way down is arithmetic: child ``2i + 1`` or ``2i + 2``.

    A split's missing-value rule is moved into its column: ``_NAN_LEFT`` holds the feature
    with NaN as -inf (so it goes left), ``_ZERO_RIGHT`` with zero (and NaN, read as zero) as
    +inf, and so on; a categorical split gets a column of its own holding 0.0 when the row's
    category is in the split's set, else 1.0 (threshold 0.5). None when a tree is deeper than
    ``_HEAP_MAX_DEPTH`` or a threshold is not finite (the substituted infinities would tie)."""
    feat, left, right = ar["feat"], ar["left"], ar["right"]
    ts = ar["tree_start"]
    n = len(feat)
    depth = np.zeros(n, dtype=np.int64)
    for i in range(n):  # pre-order: a parent before its children
        if feat[i] >= 0:
            depth[left[i]] = depth[right[i]] = depth[i] + 1
    split = feat >= 0
    if not np.isfinite(ar["thr"][split]).all():
        return None
    tree_depth = np.array([depth[a:b].max() for a, b in itertools.pairwise(ts.tolist())],
                          dtype=np.int64)
    if tree_depth.max(initial=0) > _HEAP_MAX_DEPTH:
        return None
    kind = np.select(
        [ar["kind"] == 1, (ar["miss"] == 2) & (ar["defl"] == 1), ar["miss"] == 2,
         (ar["miss"] == 1) & (ar["defl"] == 1), ar["miss"] == 1],
        [_IN_SET, _NAN_LEFT, _NAN_RIGHT, _ZERO_LEFT, _ZERO_RIGHT], _PLAIN)
    columns: dict[tuple, int] = {(_CONST, 0, 0, 0): 0}  # the padding splits' column
    node_off = np.zeros(len(tree_depth) + 1, dtype=np.int64)
    leaf_off = np.zeros(len(tree_depth) + 1, dtype=np.int64)
    node_off[1:] = np.cumsum((1 << tree_depth) - 1)
    leaf_off[1:] = np.cumsum(1 << tree_depth)
    col = np.zeros(node_off[-1], dtype=np.int64)
    thr = np.full(node_off[-1], np.inf)  # padding: 0.0 <= inf, always left
    leaf = np.zeros(leaf_off[-1])
    for t, root in enumerate(ts[:-1].tolist()):
        d_max, n0, l0 = int(tree_depth[t]), int(node_off[t]), int(leaf_off[t])
        stack = [(root, 0)]
        while stack:
            i, h = stack.pop()
            if feat[i] < 0:  # left, left, ... down to the bottom
                for _ in range(d_max - int(depth[i])):
                    h = 2 * h + 1
                leaf[l0 + h - ((1 << d_max) - 1)] = value[i]
                continue
            k = int(kind[i])
            key = ((k, int(feat[i]), int(ar["cat_off"][i]), int(ar["cat_len"][i]))
                   if k == _IN_SET else (k, int(feat[i]), 0, 0))
            col[n0 + h] = columns.setdefault(key, len(columns))
            thr[n0 + h] = 0.5 if k == _IN_SET else ar["thr"][i]
            stack += [(int(left[i]), 2 * h + 1), (int(right[i]), 2 * h + 2)]
    # columns grouped by kind, so preparing a row runs one branch-free loop per kind
    keys = sorted(columns, key=lambda k: (k[0], columns[k]))
    new = np.empty(len(keys), dtype=np.int64)
    new[[columns[k] for k in keys]] = np.arange(len(keys))
    kinds = np.array([k[0] for k in keys])
    sets = [k for k in keys if k[0] == _IN_SET]
    width = max([32 * k[3] for k in sets] + [0]) + 1  # the last code: not in any set
    in_set = np.ones((max(len(sets), 1), width))
    bits = ar["cat_bits"]
    for j, (_, _, off, length) in enumerate(sets):
        codes = np.arange(32 * length)
        hit = (bits[off + codes // 32].astype(np.int64) >> (codes % 32)) & 1
        in_set[j, :32 * length][hit == 1] = 0.0
    return (
        new[col], thr, leaf, node_off, leaf_off, tree_depth,
        np.array([k[1] for k in keys], dtype=np.int64),
        np.searchsorted(kinds, np.arange(8)).astype(np.int64),
        in_set,
    )


def _heap_rows(x, r0, r1, cf, kb, in_set, xb):
    """Rows ``r0:r1`` of ``x`` as the heap walk's columns (:func:`_heap_layout`): ``cf`` the
    feature of each column, ``kb`` where each kind's columns start. LightGBM's rules: NaN is
    read as 0.0 unless the split sends it its own way, values within its zero threshold are
    0.0, and a category is ``int(value)``, right when NaN or negative."""
    z = _ZERO
    top = in_set.shape[1] - 1
    for row in range(r0, r1):
        rr = row - r0
        for c in range(kb[0], kb[1]):
            v = x[row, cf[c]]
            xb[rr, c] = 0.0 if (np.isnan(v) or -z <= v <= z) else v
        for c in range(kb[1], kb[2]):
            v = x[row, cf[c]]
            xb[rr, c] = -np.inf if np.isnan(v) else (0.0 if -z <= v <= z else v)
        for c in range(kb[2], kb[3]):
            v = x[row, cf[c]]
            xb[rr, c] = np.inf if np.isnan(v) else (0.0 if -z <= v <= z else v)
        for c in range(kb[3], kb[4]):
            v = x[row, cf[c]]
            xb[rr, c] = -np.inf if (np.isnan(v) or -z <= v <= z) else v
        for c in range(kb[4], kb[5]):
            v = x[row, cf[c]]
            xb[rr, c] = np.inf if (np.isnan(v) or -z <= v <= z) else v
        for c in range(kb[5], kb[6]):
            v = x[row, cf[c]]
            code = top  # NaN, negative or past every set: right
            if -1.0 < v < top:  # int() truncates: (-1, 0) is category 0, as in LightGBM
                code = int(v)
            xb[rr, c] = in_set[c - kb[5], code]
        for c in range(kb[6], kb[7]):
            xb[rr, c] = 0.0


def _heap_pass(x, out, col, thr, leaf, node_off, leaf_off, depth, cf, kb, in_set):
    """Adds every row's raw score to ``out``, on the layout of :func:`_heap_layout`
    (compiled by numba; see :func:`_kernel`). A block of rows goes
    through a tree one level at a time: each row's step is a few loads and a comparison,
    with no branch on its data and no dependence on the other rows' steps, so the processor
    overlaps them (the node-by-node walk mispredicts about one branch in two). Leaf values
    are added in tree order: the same doubles. About 6 times a node-by-node walk's speed on
    depth-6 models in batches; a single row costs a few times more than such a walk, but
    still less than ``Booster.predict``'s per-call cost."""
    block = 32
    n = x.shape[0]
    xb = np.empty((block, cf.shape[0]))
    at = np.empty(block, dtype=np.int64)
    for r0 in range(0, n, block):
        r1 = min(n, r0 + block)
        nr = r1 - r0
        _heap_rows(x, r0, r1, cf, kb, in_set, xb)
        for t in range(depth.shape[0]):
            n0, l0 = node_off[t], leaf_off[t]
            for rr in range(nr):
                at[rr] = 0
            for _ in range(depth[t]):
                for rr in range(nr):
                    i = at[rr]
                    at[rr] = 2 * i + 1 + np.int64(xb[rr, col[n0 + i]] > thr[n0 + i])
            first = (1 << depth[t]) - 1
            for rr in range(nr):
                out[r0 + rr] += leaf[l0 + at[rr] - first]


def _kernel(name: str = "shap"):
    """The ``shap`` (:func:`_shap_pass`), ``shared`` (:func:`_shared_pass`), ``heap``
    (:func:`_heap_pass`) or ``predict_runs`` (:func:`_predict_runs_pass`) kernel, compiled
    once per process; None when numba is not importable."""
    with _lock:
        return _compile().get(name)


def _compile() -> dict:
    global _kernels, _go_left, _clean_rows, _heap_rows, _trailing_zeros
    if _kernels is None:
        try:
            import numba
        except ImportError:  # pragma: no cover - numba comes with shap, a dependency
            _kernels = {}
        else:
            if not isinstance(_go_left, numba.core.registry.CPUDispatcher):
                _go_left = numba.njit(inline="always")(_go_left)
                _clean_rows = numba.njit(inline="always")(_clean_rows)
                _heap_rows = numba.njit(inline="always")(_heap_rows)
            from numba.cpython.unsafe.numbers import trailing_zeros as _trailing_zeros
            jit = numba.njit(nogil=True, cache=True)
            _kernels = {"shap": jit(_shap_pass), "predict_runs": jit(_predict_runs_pass),
                        "heap": jit(_heap_pass), "shared": jit(_shared_pass)}
    return _kernels


def run(kernel, x: np.ndarray, out: np.ndarray, args: tuple, num_threads: int) -> None:
    """``kernel`` over the rows of ``x``; it releases the GIL, so one thread per slice."""
    if num_threads <= 1 or len(x) < 512:  # a request's rows: threads cost more than they save
        kernel(x, out, *args)
        return
    chunks = [c for c in np.array_split(np.arange(len(x)), num_threads) if len(c)]
    from concurrent.futures import ThreadPoolExecutor

    views = [(x[c[0]:c[-1] + 1], out[c[0]:c[-1] + 1]) for c in chunks]
    with ThreadPoolExecutor(len(views)) as pool:
        list(pool.map(lambda v: kernel(v[0], v[1], *args), views))


def available() -> bool:
    """Whether numba compiles the kernels here."""
    return bool(_kernel("heap"))


def contributions(tables: Tables, x: np.ndarray, out: np.ndarray, num_threads: int) -> None:
    """Adds TreeSHAP contributions of the rows of ``x`` to ``out`` (rows × features+1)."""
    if tables.shared is not None and len(x) >= _SHARED_MIN_ROWS:
        run(_kernel("shared"), x, out, tables.shared, num_threads)
    else:
        run(_kernel("shap"), x, out, tables.shap, num_threads)


def raw(tables: Tables, x: np.ndarray, out: np.ndarray, num_threads: int) -> None:
    """Adds the raw score of each row of ``x`` to ``out`` (:func:`_heap_pass`)."""
    run(_kernel("heap"), x, out, tables.heap, num_threads)


def raw_runs(tables: Tables, lead: np.ndarray, vals: np.ndarray, vcols: np.ndarray,
             out: np.ndarray, num_threads: int) -> None:
    """Adds the raw scores of runs of rows (:func:`_predict_runs_pass`) to ``out`` (k × G);
    runs split over threads when there are enough."""
    kernel = _kernel("predict_runs")
    node, thr = tables.packed
    args = (node, thr, tables.arrays["tree_start"], tables.arrays["cat_bits"])
    k, group = vals.shape[:2]
    if num_threads <= 1 or k * group < 512 or k < 2:
        kernel(lead, vals, vcols, out, *args)
        return
    from concurrent.futures import ThreadPoolExecutor

    cuts = np.linspace(0, k, min(num_threads, k) + 1).astype(int)
    with ThreadPoolExecutor(len(cuts) - 1) as pool:
        list(pool.map(lambda ab: kernel(lead[ab[0]:ab[1]], vals[ab[0]:ab[1]], vcols,
                                        out[ab[0]:ab[1]], *args),
                      itertools.pairwise(cuts.tolist())))
