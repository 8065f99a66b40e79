"""The scorer core: feature rows in, scores with reasons out. HTTP and batch both call this.

It holds the champion models (as :class:`~leadscore.artifact.LeadModel`, loaded from the
registry) and turns a feature frame into the output contract of DESIGN.md. Reasons are LightGBM's
exact TreeSHAP contributions (``pred_contrib``), the same values ``shap.TreeExplainer`` gives,
computed only for the rows that ask for them.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from leadscore.artifact import LeadModel
from leadscore.features import catalog

log = logging.getLogger(__name__)

#: model name → the output column of its probability
PROBA_COLUMN = {"conversion": "p_convert", "contact": "p_inquiry", "churn": "p_churn"}
SLOT_MODEL = "contact-slot"
ALL_MODELS = (*PROBA_COLUMN, SLOT_MODEL)
OUTPUT_COLUMNS = (
    "lead_id", "dealer_id", "as_of", "p_convert", "lead_score", "grade", "p_inquiry",
    "contact_urgency", "best_slot_start", "best_channel", "p_response", "p_churn", "reasons",
    "model_versions",
)
URGENCY = {"A": "now", "B": "within_3_days", "C": "nurture", "D": "nurture"}


@dataclass(frozen=True)
class Reason:
    model: str
    feature: str
    value: float | str | None
    contribution: float
    sentence: str

    def as_dict(self) -> dict:
        return {"model": self.model, "feature": self.feature, "value": self.value,
                "contribution": round(self.contribution, 6), "sentence": self.sentence}


def _plain(v) -> float | str | None:
    if v is None:
        return None
    if isinstance(v, (float, np.floating)):
        return None if math.isnan(v) else float(v)
    if isinstance(v, (int, np.integer)):
        return float(v)
    return str(v)


def reasons_for(model: LeadModel, rows: pd.DataFrame, contrib: np.ndarray, top: int
                ) -> list[list[Reason]]:
    """Top ``top`` positive and top ``top`` negative contributions per row, as sentences.

    Missing values contribute too (LightGBM routes them); their sentence says so plainly.
    """
    out: list[list[Reason]] = []
    feats = model.features
    values = rows[feats]
    c = contrib[:, :-1]
    for i in range(len(rows)):
        ci = c[i]
        order = np.argsort(-ci)
        pos = [j for j in order[:top] if ci[j] > 0]
        neg = [j for j in order[::-1][:top] if ci[j] < 0]
        rs = []
        for j in (*pos, *neg):
            f = feats[j]
            v = _plain(values.iat[i, j])
            rs.append(Reason(model.name, f, v, float(ci[j]), catalog.BY_NAME[f].sentence(v)))
        out.append(rs)
    return out


class Scorer:
    """Scores feature rows with whichever of the models are loaded.

    ``models`` maps a model name (conversion, contact, churn) to its artifact; a model that is
    missing leaves its columns null, so a partial deployment still serves.
    """

    def __init__(self, models: dict[str, LeadModel], num_threads: int = 1, rules=None):
        from leadscore.serving.contact_policy import RulesFile

        self.models = dict(models)
        self.num_threads = num_threads
        self.rules = rules if rules is not None else RulesFile.load()

    @property
    def versions(self) -> dict[str, str]:
        return {n: str(m.meta.get("version", "local")) for n, m in self.models.items()}

    @classmethod
    def from_registry(cls, names: Iterable[str] = ALL_MODELS, alias: str = "champion",
                      num_threads: int = 1) -> Scorer:
        from leadscore import registry

        loaded = {}
        for name in names:
            got = registry.load(name, alias)
            if got is None:
                log.warning("model leadscore-%s has no %s: its columns stay null", name, alias)
                continue
            loaded[name] = got[0]
        return cls(loaded, num_threads=num_threads)

    def score(self, feats: pd.DataFrame, *, reasons: int = 3,
              only: Iterable[str] | None = None) -> pd.DataFrame:
        """One output row per input row, columns as DESIGN.md's output contract.

        ``reasons=0`` skips the contribution pass entirely (the fast batch path); ``only``
        limits which models score (owners get churn risk, not a lead score).
        """
        keep = set(self.models) if only is None else set(only) & set(self.models)
        n = len(feats)
        out = pd.DataFrame({
            "lead_id": feats["lead_id"].astype(str).to_numpy(),
            "dealer_id": feats["dealer_id"].astype(str).to_numpy(),
            "as_of": pd.to_datetime(feats["as_of"], utc=True).to_numpy(),
        })
        for col in OUTPUT_COLUMNS[3:]:
            if col not in out:
                out[col] = None
        all_reasons: list[list[dict]] = [[] for _ in range(n)]
        for name, model in self.models.items():
            col = PROBA_COLUMN.get(name)
            if col is None or name not in keep:
                continue
            if reasons > 0 and n:
                contrib = model.contributions(feats, num_threads=self.num_threads)
                raw = contrib.sum(axis=1)
                for i, rs in enumerate(reasons_for(model, feats, contrib, reasons)):
                    all_reasons[i].extend(r.as_dict() for r in rs)
            else:
                raw = model.raw(feats, num_threads=self.num_threads)
            p = model.calibrator(raw) if n else np.array([])
            out[col] = p
            if name == "conversion":
                out["lead_score"] = np.rint(p * 100).astype("int64")
                out["grade"] = model.grade(p)
            elif name == "contact":
                out["contact_urgency"] = [URGENCY[g] for g in model.grade(p)]
        slot = self.models.get(SLOT_MODEL)
        if slot is not None and SLOT_MODEL in keep and n:
            self._recommend(slot, feats, out, all_reasons)
        out["reasons"] = [json.dumps(r, ensure_ascii=False) for r in all_reasons]
        out["model_versions"] = json.dumps(self.versions)
        return out[list(OUTPUT_COLUMNS)]

    def _recommend(self, slot: LeadModel, feats: pd.DataFrame, out: pd.DataFrame,
                   all_reasons: list[list[dict]]) -> None:
        """Best slot and channel in the next 72 hours, urgency deciding how soon."""
        from leadscore.serving.contact_policy import recommend

        urgency = out["contact_urgency"].to_numpy()
        recs = recommend(slot, feats, urgency, self.rules, num_threads=self.num_threads)
        out["best_slot_start"] = pd.to_datetime([r["best_slot_start"] for r in recs], utc=True)
        out["best_channel"] = [r["best_channel"] for r in recs]
        out["p_response"] = [r["p_response"] for r in recs]
        for i, r in enumerate(recs):
            if r["best_channel"] is not None:
                all_reasons[i].append({
                    "model": SLOT_MODEL, "feature": "best_channel", "value": r["best_channel"],
                    "contribution": round(r.get("margin", 0.0), 6), "sentence": r["reason"],
                })
