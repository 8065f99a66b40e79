"""The model artifact: what training hands to the registry and serving takes from it.

It is deliberately small and pickle-free: LightGBM's own text format for the trees, and one JSON
file with the feature list, the training categories, the calibrator, the spec's grade cuts and,
for a model boosted from a classical score, its starting margin (:class:`~leadscore.classical.
Start`). Serving depends on this module only, never on training code.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd

from leadscore.classical import Start

BOOSTER_FILE = "model.txt"
META_FILE = "meta.json"
log = logging.getLogger(__name__)
#: one decision of the scoring path at a time (serving threads share the models)
_ACCELERATE_LOCK = threading.RLock()


@dataclass
class Calibrator:
    """Maps LightGBM's raw margin to a calibrated probability.

    isotonic: piecewise-linear through (x, y) knots (sklearn's IsotonicRegression thresholds);
    sigmoid: Platt scaling ``1 / (1 + exp(-(a * margin + b)))``.
    """

    method: str
    x: list[float] = field(default_factory=list)
    y: list[float] = field(default_factory=list)
    a: float = 1.0
    b: float = 0.0

    def __call__(self, margin: np.ndarray) -> np.ndarray:
        margin = np.asarray(margin, dtype=float)
        if self.method == "isotonic":
            return np.interp(margin, self.x, self.y)
        if self.method == "sigmoid":
            return 1.0 / (1.0 + np.exp(-(self.a * margin + self.b)))
        if self.method == "none":
            return 1.0 / (1.0 + np.exp(-margin))
        raise ValueError(f"unknown calibration method {self.method!r}")


class UnsupportedModel(ValueError):
    """A booster leadscore cannot score and explain (:func:`check_booster`)."""


_LINEAR_TREE = re.compile(r"^is_linear=1$", re.MULTILINE)


def check_booster(booster: lgb.Booster, name: str = "model") -> None:
    """Refuse a booster whose scores or reasons leadscore would get wrong.

    leadscore calibrates one raw margin per row and explains it by TreeSHAP over the trees'
    leaf values: right for binary gradient boosting, not for linear leaves (``linear_tree``,
    for which LightGBM has no TreeSHAP reasons either), averaged output (``boosting: rf``)
    or several trees per iteration. Checked on LightGBM's own model text, after training and
    on every load, so such a model is never registered nor served. (The compiled kernels of
    :mod:`leadscore.fast` are checked separately, per model, against LightGBM itself.)"""
    text = booster.model_to_string(num_iteration=-1)
    head = text.split("\nTree=", 1)[0].splitlines()
    fields = dict(line.split("=", 1) for line in head if "=" in line)
    objective = (fields.get("objective") or "").split(" ", 1)[0]
    problems = []
    if objective != "binary":
        problems.append(f"objective {objective or 'none'} (leadscore scores binary models)")
    if fields.get("num_tree_per_iteration", "1") != "1" or fields.get("num_class", "1") != "1":
        problems.append("several trees per iteration (num_class > 1)")
    if "average_output" in head:
        problems.append("averaged tree output (boosting: rf)")
    if _LINEAR_TREE.search(text):
        problems.append("linear_tree (linear models in the leaves)")
    if problems:
        raise UnsupportedModel(
            f"{name}: the booster uses {'; '.join(problems)}, which leadscore cannot score "
            "with reasons (one calibrated margin, TreeSHAP over leaf values)")


@dataclass
class LeadModel:
    """A fitted booster with everything needed to score a feature frame exactly as in training."""

    name: str
    booster: lgb.Booster
    features: list[str]
    categories: dict[str, list[str]]
    calibrator: Calibrator
    grades: tuple[float, float, float] = (0.5, 0.25, 0.1)
    label: str = ""
    meta: dict = field(default_factory=dict)
    #: the margin the trees were boosted from (churn's classical score), computed from the
    #: model's own features and added to the trees' raw score; None: the trees alone
    start: Start | None = None
    #: the path :meth:`accelerate` chose (None: not decided yet) and its kernels
    _path: str | None = field(default=None, init=False, repr=False, compare=False)
    _fast: object = field(default=None, init=False, repr=False, compare=False)
    #: whether a first use tries the accelerators (set by :meth:`load`)
    _accelerate_wanted: bool = field(default=False, init=False, repr=False, compare=False)

    # -- frames ---------------------------------------------------------------------------
    def frame(self, df: pd.DataFrame) -> pd.DataFrame:
        """The model's input columns with training dtypes: categories carry exactly the
        training levels (unseen values become missing), numbers are float64."""
        missing = [f for f in self.features if f not in df.columns]
        if missing:
            raise KeyError(f"{self.name}: feature frame lacks {missing}")
        out = {}
        for f in self.features:
            col = df[f]
            if f in self.categories:
                out[f] = pd.Categorical(col.astype("object").where(col.notna(), None),
                                        categories=self.categories[f])
            else:
                out[f] = pd.to_numeric(col, errors="coerce").astype("float64")
        return pd.DataFrame(out, index=df.index)

    # -- matrices: what LightGBM sees ------------------------------------------------------
    @cached_property
    def codes(self) -> dict[str, dict]:
        """Per categorical feature: training level → the code LightGBM's pandas conversion
        gives it (its position in the booster's ``pandas_categorical``)."""
        cat_feats = [f for f in self.features if f in self.categories]
        levels = self.booster.pandas_categorical or []
        if len(levels) != len(cat_feats):
            raise ValueError(f"{self.name}: booster categories do not match the artifact's")
        out = {}
        for f, lv in zip(cat_feats, levels, strict=True):
            pos = {v: float(i) for i, v in enumerate(lv)}
            out[f] = {v: pos[v] for v in self.categories[f] if v in pos}
        return out

    @cached_property
    def index(self) -> dict[str, int]:
        """Feature name → its column in :meth:`matrix`."""
        return {f: j for j, f in enumerate(self.features)}

    @cached_property
    def categorical_mask(self) -> list[bool]:
        """Per column of :meth:`matrix`: whether it holds category codes (reasons name the
        category, not its code)."""
        return [f in self.categories for f in self.features]

    @cached_property
    def layout(self) -> tuple:
        """What the matrix depends on: models with equal layouts share one matrix."""
        return (tuple(self.features),
                tuple(sorted((f, tuple(c.items())) for f, c in self.codes.items())))

    @cached_property
    def _spec(self) -> list[tuple[str, dict | None]]:
        return [(f, self.codes.get(f)) for f in self.features]

    def matrix(self, columns, absent: Sequence[str] = ()) -> np.ndarray:
        """The float matrix LightGBM builds from :meth:`frame` (same numbers), built directly:
        pandas' categorical conversion inside ``Booster.predict`` costs more than small
        predictions themselves. ``columns`` maps a name to its column: a frame, or a
        request's records as columns of Python values (building a frame costs more than
        scoring a few rows). ``absent`` features may be missing (left NaN, for the caller to
        fill: the slot search lays out slot columns itself)."""
        missing = [f for f in self.features if f not in columns and f not in absent]
        if missing:
            raise KeyError(f"{self.name}: feature frame lacks {missing}")
        if not isinstance(columns, pd.DataFrame):  # Python values, converted one by one
            none = (None,) * len(next(iter(columns.values()), ()))
            flat = [v if type(v) is float and codes is None else _number(v, codes)
                    for f, codes in self._spec for v in columns.get(f, none)]
            return np.array(flat, dtype=np.float64).reshape(len(self.features), -1).T.copy()
        # filled a column at a time in column order, then made row-major in one copy:
        # writing columns straight into a row-major matrix strides through memory
        X = np.full((len(columns), len(self.features)), np.nan, order="F")
        for j, (f, codes) in enumerate(self._spec):
            if f not in columns:
                continue
            col = columns[f]
            if codes is not None:
                X[:, j] = col.astype("object").map(codes).to_numpy(dtype=float)
            elif (pd.api.types.is_numeric_dtype(col.dtype)
                  and not isinstance(col.dtype, pd.CategoricalDtype)):
                X[:, j] = col.to_numpy(dtype=np.float64, na_value=np.nan)
            else:
                X[:, j] = pd.to_numeric(col, errors="coerce").astype("float64").to_numpy()
        return np.ascontiguousarray(X)

    # -- scoring (a frame, or a ready matrix from :meth:`matrix`) ----------------------------
    # LightGBM's own predict is the reference path; the compiled kernels of
    # :mod:`leadscore.fast` take over only where :meth:`accelerate` verified them.
    def accelerate(self, enabled: bool, sample: np.ndarray | None = None) -> str:
        """Decide, once, which path scores this model, and return it (:attr:`scoring_path`).

        ``enabled``: whether the accelerators may be used (:func:`leadscore.fast.enabled`
        where a model is loaded). They are only when they give LightGBM's numbers on
        sample rows (``sample``: extra rows of :meth:`matrix`); otherwise one warning says
        why, and LightGBM scores the model. A booster leadscore cannot score at all
        (:func:`check_booster`; one built in memory has not been through :meth:`load`)
        raises :class:`UnsupportedModel`, on either path."""
        with _ACCELERATE_LOCK:
            check_booster(self.booster, self.name)
            if not enabled:
                fast, path = None, "lightgbm: accelerators off"
                log.info("%s: scored by LightGBM (accelerators off)", self.name)
            else:
                from leadscore.fast import Accelerated

                fast, why = Accelerated.for_model(self, sample)
                path = "accelerated" if fast is not None else f"lightgbm: {why}"
                if fast is None:
                    log.warning("%s: scored by LightGBM, not the compiled kernels: %s",
                                self.name, why)
            self._fast, self._path = fast, path
        return path

    @property
    def scoring_path(self) -> str:
        """``accelerated``, or ``lightgbm: <why not>``; decided on first use when
        :meth:`accelerate` was not called (a loaded model then tries the accelerators
        unless they were turned off when it was loaded; one built in memory does not)."""
        self._fast_or_none()
        return self._path

    def _fast_or_none(self):
        if self._path is None:
            with _ACCELERATE_LOCK:  # re-entrant: accelerate takes it too
                if self._path is None:
                    self.accelerate(self._accelerate_wanted)
        return self._fast

    def _x(self, data) -> np.ndarray:
        return data if isinstance(data, np.ndarray) else self.matrix(data)

    def raw(self, data, num_threads: int = 1) -> np.ndarray:
        """The raw margin: LightGBM's ``raw_score`` of the trees, plus the starting margin
        when the model has one (:attr:`start`)."""
        x = self._x(data)
        fast = self._fast_or_none()
        if fast is not None:
            raw = fast.raw(x, num_threads=num_threads)
        else:
            raw = self.booster.predict(x, raw_score=True, num_threads=num_threads)
        return raw if self.start is None else raw + self.start_margin(x)

    @cached_property
    def start_columns(self) -> list[int]:
        """The columns of :meth:`matrix` the starting margin reads (none without one)."""
        if self.start is None:
            return []
        missing = [f for f in self.start.features if f not in self.index]
        if missing:
            raise ValueError(f"{self.name}: the starting margin reads {missing}, which are "
                             "not features of the model")
        return [self.index[f] for f in self.start.features]

    def start_margin(self, x: np.ndarray) -> np.ndarray:
        """The starting margin of the rows of the matrix ``x`` (zeros without one)."""
        x = np.asarray(x, dtype=np.float64)
        if self.start is None:
            return np.zeros(len(x))
        return self.start.margin_of(x[:, self.start_columns])

    def predict_proba(self, data, num_threads: int = 1) -> np.ndarray:
        return self.calibrator(self.raw(data, num_threads=num_threads))

    def predict_proba_runs(self, lead: np.ndarray, vals: np.ndarray, vcols: np.ndarray,
                           num_threads: int = 1) -> np.ndarray:
        """:meth:`predict_proba` (k x G) of each row of ``lead`` with its ``vcols`` set to
        each of its G rows of ``vals`` (the slot search's candidates); the accelerated path
        never lays them out in full (:meth:`leadscore.fast.Accelerated.raw_runs`)."""
        fast = self._fast_or_none()
        if fast is not None:
            raw = fast.raw_runs(lead, vals, vcols, num_threads=num_threads)
        else:
            k, group = vals.shape[:2]
            rows = np.repeat(np.asarray(lead, dtype=np.float64), group, axis=0)
            rows[:, np.asarray(vcols, dtype=np.int64)] = vals.reshape(k * group, -1)
            raw = self.booster.predict(rows, raw_score=True,
                                       num_threads=num_threads).reshape(k, group)
        if self.start is not None:  # only its few columns laid out
            cols = self.start_columns
            k, group = vals.shape[:2]
            part = np.repeat(np.asarray(lead, dtype=np.float64)[:, cols], group, axis=0)
            flat = np.asarray(vals, dtype=np.float64).reshape(k * group, -1)
            for i, c in enumerate(np.asarray(vcols, dtype=np.int64).tolist()):
                if c in cols:
                    part[:, cols.index(c)] = flat[:, i]
            raw = raw + self.start.margin_of(part).reshape(k, group)
        return self.calibrator(raw)

    def contributions(self, data, num_threads: int = 1) -> np.ndarray:
        """Exact TreeSHAP contributions on the raw margin (LightGBM's ``pred_contrib``); the
        last column is the base value, so each row sums to the raw score. A starting margin
        goes into that base column: reasons stay the trees' contributions of the features."""
        x = self._x(data)
        fast = self._fast_or_none()
        if fast is not None:
            out = fast.contributions(x, num_threads=num_threads)
        else:
            out = self.booster.predict(x, pred_contrib=True, num_threads=num_threads)
        if self.start is not None:
            out[:, -1] += self.start_margin(x)
        return out

    def warm_up(self) -> None:
        """Decide the scoring path and build what the first request would otherwise wait
        for: category maps, the kernels' tables and compiled code (a request's few rows and
        bigger batches take different ones, and the slot search its own)."""
        _ = self.layout
        _ = self.scoring_path
        for rows in (1, 8):
            x = np.full((rows, len(self.features)), np.nan)
            self.contributions(x)
            self.raw(x)
        self.predict_proba_runs(x[:1], np.full((1, 2, 1), np.nan), np.zeros(1, dtype=np.int64))

    def grade(self, p: np.ndarray) -> np.ndarray:
        a, b, c = self.grades
        p = np.asarray(p, dtype=float)
        return _GRADES[np.where(np.isnan(p), 3, (p < a).astype(np.int8) + (p < b) + (p < c))]

    # -- persistence ----------------------------------------------------------------------
    def save(self, directory: Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        booster, meta = self.to_text()
        (directory / BOOSTER_FILE).write_text(booster)
        (directory / META_FILE).write_text(meta)
        return directory

    def to_text(self) -> tuple[str, str]:
        """The artifact as text: LightGBM's model text and the metadata JSON. The one
        serialisation: the registry's files and the Spark workers' broadcast both use it, so
        no copy can drop a part of the model (the starting margin, say)."""
        meta = {
            "name": self.name,
            "features": self.features,
            "categories": self.categories,
            "calibrator": self.calibrator.__dict__,
            "grades": list(self.grades),
            "label": self.label,
            "meta": self.meta,
            **({"start": self.start.to_json()} if self.start is not None else {}),
        }
        return self.booster.model_to_string(), json.dumps(meta, indent=1)

    @classmethod
    def load(cls, directory: Path, accelerate: bool | None = None) -> LeadModel:
        """The artifact in ``directory``. ``accelerate``: whether it may be scored by the
        compiled kernels once verified (:meth:`accelerate`, on first use or warm-up); None
        reads ``LEADSCORE_ACCELERATE`` (:func:`leadscore.fast.enabled`), here and only here."""
        directory = Path(directory)
        return cls.from_text((directory / BOOSTER_FILE).read_text(),
                             (directory / META_FILE).read_text(), accelerate,
                             where=str(directory / BOOSTER_FILE))

    @classmethod
    def from_text(cls, booster_text: str, meta_json: str, accelerate: bool | None = None,
                  where: str = "") -> LeadModel:
        """:meth:`to_text`'s inverse (``accelerate`` as in :meth:`load`)."""
        from leadscore import fast

        meta = json.loads(meta_json)
        booster = lgb.Booster(model_str=booster_text)
        check_booster(booster, f"{meta['name']} ({where or 'model text'})")
        model = cls(
            name=meta["name"],
            booster=booster,
            features=meta["features"],
            categories=meta["categories"],
            calibrator=Calibrator(**meta["calibrator"]),
            grades=tuple(meta["grades"]),
            label=meta.get("label", ""),
            meta=meta.get("meta", {}),
            start=Start.from_json(meta["start"]) if meta.get("start") else None,
        )
        _ = model.start_columns  # a start reading features the model lacks is refused here
        model._accelerate_wanted = fast.enabled() if accelerate is None else accelerate
        return model

_GRADES = np.array(["A", "B", "C", "D"], dtype=object)


def _number(v, codes: dict | None) -> float:
    """What :meth:`LeadModel.frame` makes of a Python value: a category's code (missing when
    not a training level), else the number ``pd.to_numeric`` makes of it."""
    if v is None:
        return math.nan
    if codes is not None:
        try:
            return codes.get(v, math.nan)
        except TypeError:  # unhashable: not a level
            return math.nan
    return float(v) if type(v) is int and -(2**53) <= v <= 2**53 else _to_float(v)


def _to_float(v) -> float:
    """What ``pd.to_numeric(errors="coerce")`` + float64 makes of one odd value."""
    s = pd.to_numeric(pd.Series([v], dtype=object), errors="coerce").astype("float64")
    return float(s.iloc[0])


def find_artifact_dir(root: Path) -> Path:
    """The folder holding ``meta.json`` inside a downloaded MLflow model (or the root)."""
    root = Path(root)
    if (root / META_FILE).is_file():
        return root
    hits = sorted(root.rglob(META_FILE))
    if not hits:
        raise FileNotFoundError(f"no {META_FILE} under {root}")
    return hits[0].parent
