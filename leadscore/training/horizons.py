"""Time to order: where a 7-, 15- or 90-day model learns its ranking from.

A horizon's own labels are the natural target, but they are not always the better teacher:
a 90-day window is observed for fewer, older cutoffs, and a 7-day one has few positives. So
a horizon run also boosts the same trees on the 30-day labels of the same rows ("the 30-day
ranking") and keeps whichever ranks the horizon's own held-out orders better. Either way the
model is calibrated on the horizon's own labels and stays one booster, so serving, reasons
and the monotone correction do not change.

The 30-day ranking fitted here is also the fair yardstick for the horizon model: trained on
the same rows and period. The 30-day champion is not, since its training rows may include
this run's holdout cutoffs (a later out-of-time split) and their 30-day outcomes, which are
part of the 90-day ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from leadscore import models

#: the column of 30-day labels on a horizon run's rows (missing: the window not observed)
LABEL_30D = "label_30d"


def labels_30d(con, frame: pd.DataFrame, data_end: pd.Timestamp) -> np.ndarray:
    """Per row of ``frame``: whether the lead ordered within 30 days of its cutoff, by the
    conversion model's own label rule; NaN where that window is not observed by
    ``data_end`` (never a negative). The column :data:`LABEL_30D` of a horizon run."""
    from leadscore.training import dataset

    lab = dataset.label_rows(con, frame, models.get("conversion"), data_end)
    y = lab["label"].to_numpy(dtype="float64", copy=True)
    y[lab["censored"].to_numpy()] = np.nan
    return y


@dataclass(frozen=True)
class RankingChoice:
    """Which ranking a horizon run kept, and the held-out figures it chose on."""

    borrowed: bool  # True: the 30-day ranking
    auc_own: float
    auc_30d: float
    rows: int

    @property
    def boost_label(self) -> str | None:
        """The ``boost_label`` the kept fit (and its refit) used."""
        return LABEL_30D if self.borrowed else None

    def metrics(self) -> dict[str, float]:
        return {"ranking_heldout_auc_own": self.auc_own,
                "ranking_heldout_auc_30d": self.auc_30d}

    def note(self) -> str:
        kept = "the 30-day ranking" if self.borrowed else "its own labels' ranking"
        return (f"time to order: kept {kept} (held-out ROC AUC on this horizon's labels "
                f"{self.auc_own:.4f} own, {self.auc_30d:.4f} from the 30-day labels, on "
                f"{self.rows:,} rows; calibrated on this horizon's labels either way)")


def choose(held: pd.DataFrame, own, borrowed, num_threads: int = 1) -> RankingChoice:
    """The fit (:class:`~leadscore.training.trainer.FitResult`, same spec and seed) whose
    margin ranks the horizon's labels on ``held`` (rows boosting never saw,
    :func:`~leadscore.training.dataset.held_out`) better; a tie keeps the own labels'. No
    prior either way: both are the same trees on the same rows, taught by labels that
    differ only in their window."""
    from sklearn.metrics import roc_auc_score

    y = held["label"].to_numpy()
    if y.min() == y.max():  # one class: nothing to rank, the own labels' fit stays
        return RankingChoice(False, float("nan"), float("nan"), len(held))
    a_own = float(roc_auc_score(y, own.margin(held, num_threads=num_threads)))
    a_30 = float(roc_auc_score(y, borrowed.margin(held, num_threads=num_threads)))
    return RankingChoice(a_30 > a_own, a_own, a_30, len(held))
