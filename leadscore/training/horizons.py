"""Time to order: where a 7-, 15- or 90-day model learns its ranking from.

A horizon's own labels are the natural target, but they are not always the better teacher:
a 90-day window is observed for fewer, older cutoffs, and a 7-day one has few positives. So
a horizon run also boosts the same trees on the 30-day labels of the same rows ("the 30-day
ranking") and keeps it unless the own labels' ranking ranks the horizon's held-out orders
clearly better. The 30-day labels are the denser teacher, and the default: a horizon model
then ranks exactly as the 30-day ranking of its rows does. Either way
the model is calibrated on the horizon's own labels and stays one booster, so serving,
reasons and the monotone correction do not change.

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
from leadscore.training.evaluate import CLEAR_WIN, RESAMPLES, win_share

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
    #: share of the resamples in which the own labels' ranking ranked better
    own_win: float = float("nan")

    @property
    def boost_label(self) -> str | None:
        """The ``boost_label`` the kept fit (and its refit) used."""
        return LABEL_30D if self.borrowed else None

    def metrics(self) -> dict[str, float]:
        return {"ranking_heldout_auc_own": self.auc_own,
                "ranking_heldout_auc_30d": self.auc_30d,
                "ranking_own_win_share": self.own_win}

    def note(self) -> str:
        kept = "the 30-day ranking" if self.borrowed else "its own labels' ranking"
        if np.isnan(self.own_win):
            return (f"time to order: kept {kept} (the held-out rows hold one class: nothing "
                    "to rank on; calibrated on this horizon's labels)")
        return (f"time to order: kept {kept} (held-out ROC AUC on this horizon's labels "
                f"{self.auc_own:.4f} own, {self.auc_30d:.4f} from the 30-day labels, on "
                f"{self.rows:,} rows; own better in {self.own_win:.0%} of {RESAMPLES} "
                f"resamples of the leads, {CLEAR_WIN:.0%} needed; calibrated on this "
                "horizon's labels either way)")


def choose(held: pd.DataFrame, own, borrowed, num_threads: int = 1,
           seed: int = 0) -> RankingChoice:
    """Keep the 30-day ranking (``borrowed``) unless the own labels' fit (``own``; both
    :class:`~leadscore.training.trainer.FitResult` of the same spec and seed) ranks the
    horizon's labels on ``held`` (rows boosting never saw,
    :func:`~leadscore.training.dataset.held_out`) clearly better: a higher ROC AUC in at
    least :data:`~leadscore.training.evaluate.CLEAR_WIN` of bootstrap resamples of the
    leads. Held-out orders within 7 or 15 days are few, and there a difference is mostly
    noise."""
    from sklearn.metrics import roc_auc_score

    y = held["label"].to_numpy()
    if len(y) == 0 or y.min() == y.max():  # one class: nothing to rank on, the default
        return RankingChoice(True, float("nan"), float("nan"), len(held))
    m_own = own.margin(held, num_threads=num_threads)
    m_30 = borrowed.margin(held, num_threads=num_threads)
    share = win_share(y, m_own, m_30, held["lead_id"], seed)
    return RankingChoice(share < CLEAR_WIN, float(roc_auc_score(y, m_own)),
                         float(roc_auc_score(y, m_30)), len(held), share)
