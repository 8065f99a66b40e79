"""Diagnostic plots logged with every run (matplotlib, headless). Every title names the model
(``model``): a plot downloaded from a run or pasted into a report still says whose it is."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


def calibration_curve(y: np.ndarray, p: np.ndarray, path: Path, model: str,
                      bins: int = 10) -> Path:
    q = np.quantile(p, np.linspace(0, 1, bins + 1))
    idx = np.clip(np.searchsorted(q, p, side="right") - 1, 0, bins - 1)
    df = pd.DataFrame({"b": idx, "y": y, "p": p}).groupby("b").mean()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect")
    ax.plot(df["p"], df["y"], "o-", label="model")
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed rate")
    ax.set_title(f"{model}: calibration (equal-mass bins)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def gains_chart(y: np.ndarray, p: np.ndarray, path: Path, model: str) -> Path:
    order = np.argsort(-p, kind="stable")
    cum = np.cumsum(y[order]) / max(y.sum(), 1)
    share = np.arange(1, len(y) + 1) / len(y)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(share, cum, label="model")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="random")
    ax.set_xlabel("share of leads called (highest score first)")
    ax.set_ylabel("share of positives reached")
    ax.set_title(f"{model}: cumulative gains")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def importance(names: list[str], gain: np.ndarray, path: Path, model: str,
               top: int = 20) -> Path:
    order = np.argsort(gain)[::-1][:top][::-1]
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.barh([names[i] for i in order], gain[order])
    ax.set_xlabel("total gain")
    ax.set_title(f"{model}: feature importance")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def shap_summary(contrib: np.ndarray, X: pd.DataFrame, path: Path, model: str) -> Path:
    """SHAP beeswarm from LightGBM's exact contributions (same values as TreeExplainer)."""
    import shap

    Xn = X.copy()
    for c in Xn.columns:
        if isinstance(Xn[c].dtype, pd.CategoricalDtype):
            Xn[c] = Xn[c].cat.codes.astype(float)
    shap.summary_plot(contrib[:, :-1], Xn, show=False, max_display=20)
    fig = plt.gcf()
    fig.axes[0].set_title(f"{model}: contributions to the margin (SHAP)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
