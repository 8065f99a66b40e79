"""``btyd.use: auto``: churn's default fits the trees alone and from the classical start and
keeps the start unless the trees alone rank the held-out leads clearly better
(leadscore.training.btyd.choose_start)."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from leadscore import classical, models
from leadscore.training import btyd, dataset, evaluate
from leadscore.training.config import ExperimentConfig
from leadscore.training.dataset import TrainingSet, lead_share
from leadscore.training.run import _btyd_input, _Classical, _evaluation_fit, resolve_spec


def test_auto_is_churns_default_and_the_explicit_choices_remain():
    assert ExperimentConfig(model="churn").btyd.use == "auto"
    # the default of every model: nothing to choose outside churn, never an error
    assert ExperimentConfig(model="conversion").btyd.use == "auto"
    for use in ("off", "baseline", "init_score", "feature"):
        assert ExperimentConfig(model="churn", btyd={"use": use}).btyd.use == use
    # a Pareto/NBD start is not servable: auto then keeps the trees (see below), no error
    assert ExperimentConfig(model="churn", btyd={"model": "pareto_nbd"}).btyd.use == "auto"


def _sim(start_informative: bool, seed: int = 0) -> TrainingSet:
    """Leads at 4 weekly cutoffs with one feature and a starting-margin column; the label
    follows the start (``start_informative``) or the feature, the other being noise."""
    rng = np.random.default_rng(seed)
    n, k = 1500, 4
    frame = pd.DataFrame({"lead_id": np.repeat([f"L{i}" for i in range(n)], k),
                          "as_of": np.tile(pd.date_range("2026-01-05", periods=k, freq="7D",
                                                         tz="UTC"), n)})
    x = rng.normal(size=len(frame))
    s = rng.normal(scale=1.5, size=len(frame))
    z = 2.5 * (s if start_informative else x)
    frame["lead_age_days"] = x
    frame["btyd_init"] = s
    frame["label"] = (rng.random(len(frame)) < 1 / (1 + np.exp(-z))).astype(int)
    u = lead_share(frame["lead_id"], 0)
    frame["split"] = np.select([u < 0.6, u < 0.75, u < 0.9], ["fit", "valid", "calib"],
                               "test")
    return TrainingSet(frame=frame, cutoffs=[], data_end=frame["as_of"].max(), n_censored=0,
                       split_kind="entity")


def _tiny_churn():
    return replace(models.get("churn"), features=("lead_age_days",), monotone={})


@pytest.mark.parametrize("start_informative", [True, False])
def test_auto_keeps_the_fit_better_on_valid(start_informative):
    """The start carrying the signal: auto keeps the fit boosted from it, with its start and
    margin column; the start being noise: the trees alone, with neither."""
    spec, ts = _tiny_churn(), _sim(start_informative)
    cfg = ExperimentConfig(model="churn", params={"min_data_in_leaf": 20})
    sentinel = object()  # the classical.Start the registered model would carry
    fitted = _Classical(fits=[(pd.Timestamp("2026-01-05"), btyd.Fitted("bgnbd", {}, 0))],
                        inputs={})
    fr, overrides, init, start, choice = _evaluation_fit(spec, ts, cfg, 1, "btyd_init",
                                                         sentinel, fitted)
    assert choice is not None and choice.use_start is start_informative
    assert overrides == cfg.params
    if start_informative:
        assert choice.auc_start > choice.auc_trees + 0.03
        assert (init, start, fr.init) == ("btyd_init", sentinel, "btyd_init")
        assert choice.choice == "init_score"
    else:
        assert choice.auc_trees > choice.auc_start + 0.03
        assert (init, start, fr.init) == (None, None, None)
        assert choice.choice == "none"
    assert f"kept the {'classical start' if start_informative else 'trees alone'}" in \
        ts.notes[0]
    assert any("boosted from the classical" in n for n in ts.notes) is start_informative
    valid = ts.part("valid")
    assert choice.metrics()["btyd_auto_heldout_auc_start"] == choice.auc_start
    assert choice.rows == len(dataset.held_out(ts.frame))
    assert 0.5 < max(choice.auc_start, choice.auc_trees) <= 1.0
    assert fr.predict_proba(valid).shape == (len(valid),)


def test_explicit_choices_fit_once():
    """init_score and baseline are fitted as before: one fit, nothing chosen."""
    spec, ts = _tiny_churn(), _sim(True)
    for use, init in (("init_score", "btyd_init"), ("baseline", None)):
        cfg = ExperimentConfig(model="churn", btyd={"use": use})
        fr, _, got, _, choice = _evaluation_fit(spec, ts, cfg, 1, init, None, None)
        assert choice is None and got == init and fr.init == init


class _Margins:
    def __init__(self, m):
        self.m = m

    def margin(self, df, num_threads=1):
        return self.m


def _held(n_leads: int, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Held-out rows (two cutoffs per lead) and the true margin of their labels."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=2 * n_leads)
    held = pd.DataFrame({"lead_id": np.repeat(np.arange(n_leads), 2),
                         "label": (rng.random(len(z)) < 1 / (1 + np.exp(-2 * z))).astype(int)})
    return held, z


def test_the_start_is_kept_unless_the_trees_win_clearly():
    """A small edge of the trees on few held-out leads is noise: the start (the prior) is
    kept; the same edge on many leads, or a large one on few, keeps the trees. The test
    part is never asked for."""
    for n_leads, edge, seed, trees_kept in ((150, 0.02, 2, False), (20_000, 0.1, 0, True),
                                            (150, 0.5, 0, True)):
        held, z = _held(n_leads, seed)
        rng = np.random.default_rng(seed + 100)
        start = z + rng.normal(size=len(z))                 # the prior: informative, noisy
        trees = z + (1.0 - edge) * rng.normal(size=len(z))  # other errors, a little smaller
        c = btyd.choose_start(held, _Margins(trees), _Margins(start))
        assert c.auc_trees > c.auc_start
        assert c.use_start is not trees_kept, (n_leads, edge, c)
        assert (c.trees_win >= evaluate.CLEAR_WIN) is trees_kept
        assert c.note().startswith("btyd.use auto: kept")
    # the start ranking better: always kept
    held, z = _held(150)
    c = btyd.choose_start(held, _Margins(-z), _Margins(z))
    assert c.use_start and c.trees_win == 0.0


def test_auto_keeps_the_trees_where_the_start_cannot_run():
    """No classical fit, no whole-history inputs, an excluded input or Pareto/NBD: where
    init_score stops with an error, auto fits the trees alone and says why."""
    inputs = classical.inputs_for(models.get("churn").label.events)
    fitted = _Classical(fits=[], inputs=inputs)
    cases = [
        ({}, None, "did not run"),
        ({"engagement_events": ["service_visit", "wechat_reply"]},
         _Classical(fits=[], inputs=None), "no whole-history feature group"),
        ({"exclude_features": ["inbound_typical_gap_days"]}, fitted, "excluded features"),
        ({"btyd": {"model": "pareto_nbd"}}, fitted, "cannot be computed at serving"),
    ]
    for kw, got, why in cases:
        cfg = ExperimentConfig(model="churn", **kw)
        ts = SimpleNamespace(notes=[])
        spec = resolve_spec(cfg)
        assert _btyd_input(spec, cfg, ts, got) == (spec, None, False, None)
        assert len(ts.notes) == 1 and why in ts.notes[0] and "auto" in ts.notes[0]


def test_the_choice_is_made_on_held_out_rows_of_the_later_cutoffs():
    """valid and calib rows (never fit or test) of the later half of their cutoffs: the rows
    most like the days the model will score."""
    ts = _sim(True)
    held = dataset.held_out(ts.frame)
    assert set(held["split"]) == {"valid", "calib"}
    cuts = sorted(ts.frame["as_of"].unique())
    assert sorted(held["as_of"].unique()) == cuts[2:]
    every = ts.frame[ts.frame["split"].isin(["valid", "calib"])]
    assert len(held) == (every["as_of"] >= cuts[2]).sum()
