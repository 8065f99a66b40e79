"""The model artifact: what training hands to the registry and serving takes from it.

It is deliberately small and pickle-free: LightGBM's own text format for the trees, and one JSON
file with the feature list, the training categories, the calibrator and the spec's grade cuts.
Serving depends on this module only, never on training code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd

BOOSTER_FILE = "model.txt"
META_FILE = "meta.json"


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

    # -- scoring --------------------------------------------------------------------------
    def raw(self, df: pd.DataFrame, num_threads: int = 1) -> np.ndarray:
        return self.booster.predict(self.frame(df), raw_score=True, num_threads=num_threads)

    def predict_proba(self, df: pd.DataFrame, num_threads: int = 1) -> np.ndarray:
        return self.calibrator(self.raw(df, num_threads=num_threads))

    def contributions(self, df: pd.DataFrame, num_threads: int = 1) -> np.ndarray:
        """Exact TreeSHAP contributions on the raw margin; the last column is the base value,
        so each row sums to the raw score."""
        return self.booster.predict(self.frame(df), pred_contrib=True, num_threads=num_threads)

    def grade(self, p: np.ndarray) -> np.ndarray:
        a, b, c = self.grades
        p = np.asarray(p, dtype=float)
        return np.select([p >= a, p >= b, p >= c], ["A", "B", "C"], default="D")

    # -- persistence ----------------------------------------------------------------------
    def save(self, directory: Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(str(directory / BOOSTER_FILE))
        meta = {
            "name": self.name,
            "features": self.features,
            "categories": self.categories,
            "calibrator": self.calibrator.__dict__,
            "grades": list(self.grades),
            "label": self.label,
            "meta": self.meta,
        }
        (directory / META_FILE).write_text(json.dumps(meta, indent=1))
        return directory

    @classmethod
    def load(cls, directory: Path) -> LeadModel:
        directory = Path(directory)
        meta = json.loads((directory / META_FILE).read_text())
        booster = lgb.Booster(model_file=str(directory / BOOSTER_FILE))
        return cls(
            name=meta["name"],
            booster=booster,
            features=meta["features"],
            categories=meta["categories"],
            calibrator=Calibrator(**meta["calibrator"]),
            grades=tuple(meta["grades"]),
            label=meta.get("label", ""),
            meta=meta.get("meta", {}),
        )


def find_artifact_dir(root: Path) -> Path:
    """The folder holding ``meta.json`` inside a downloaded MLflow model (or the root)."""
    root = Path(root)
    if (root / META_FILE).is_file():
        return root
    hits = sorted(root.rglob(META_FILE))
    if not hits:
        raise FileNotFoundError(f"no {META_FILE} under {root}")
    return hits[0].parent
