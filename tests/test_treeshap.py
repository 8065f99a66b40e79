"""The compiled tree kernels (``leadscore.treeshap``) against LightGBM itself: every reason
and, where the scorer uses them, every raw score comes from these, so they must give
LightGBM's own numbers on every kind of split and missing-value rule."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from leadscore import treeshap
from leadscore.artifact import Calibrator, LeadModel


def _split_kinds_model(params: dict) -> tuple[LeadModel, pd.DataFrame]:
    """A booster with numerical splits (missing: None, NaN, Zero) and categorical splits, and
    test rows that hit every branch: NaN, zeros, unseen and missing categories, thresholds."""
    rng = np.random.default_rng(3)
    n = 5000
    df = pd.DataFrame({
        "a": rng.normal(size=n),
        "b": np.where(rng.random(n) < 0.2, np.nan, rng.exponential(size=n)),
        "z": np.where(rng.random(n) < 0.3, 0.0, rng.normal(size=n)),
        "k": rng.integers(-2, 5, n).astype(float),
        "c": pd.Categorical(rng.choice(list("pqrstuvw"), n), categories=list("pqrstuvw")),
    })
    df.loc[rng.random(n) < 0.1, "c"] = np.nan
    y = (df["a"] + 0.5 * df["b"].fillna(2) - 1.2 * df["c"].isin(["q", "t"])
         + 0.8 * (df["z"] == 0) + 0.3 * df["k"] + rng.normal(size=n)) > 0.6
    booster = lgb.train({"objective": "binary", "max_depth": 6, "num_leaves": 31,
                         "min_data_per_group": 5, "cat_smooth": 1, "max_cat_to_onehot": 2,
                         "verbosity": -1, "seed": 1, "num_threads": 1, **params},
                        lgb.Dataset(df, y.astype(int)), num_boost_round=40)
    model = LeadModel("t", booster=booster, features=list(df.columns),
                      categories={"c": list("pqrstuvw")}, calibrator=Calibrator("none"))
    test = df.sample(600, random_state=1).reset_index(drop=True)
    test["c"] = test["c"].astype("object")
    test.loc[:20, "c"] = "never-seen"
    test.loc[21:40, ["a", "b", "z", "k"]] = np.nan
    test.loc[41:60, ["a", "b", "z", "k"]] = 0.0
    splits = [t for t in booster.trees_to_dataframe().itertuples()
              if isinstance(t.threshold, float) and t.split_feature in ("a", "b", "z", "k")]
    for i, t in enumerate(splits[:200]):  # values exactly on a threshold go left
        test.loc[61 + i % 500, t.split_feature] = t.threshold
    return model, test


@pytest.mark.parametrize("shared_from", [4, 10**9], ids=["shared-ways", "row-blocks"])
@pytest.mark.parametrize("params", [{}, {"zero_as_missing": True}, {"use_missing": False}],
                         ids=["nan-missing", "zero-missing", "no-missing"])
def test_batch_treeshap_equals_lightgbm_pred_contrib(params, shared_from, monkeypatch):
    """Both kernels: rows in blocks through every tree (requests' few rows), and tree by tree
    with each distinct way through a tree computed once (batches)."""
    monkeypatch.setattr(treeshap, "_SHARED_MIN_ROWS", shared_from)
    model, test = _split_kinds_model(params)
    tables = treeshap._ShapTables(model.booster)
    assert tables.usable and tables.max_path <= 5 and tables.shared is not None
    theirs = model.booster.predict(model.frame(test), pred_contrib=True)
    for threads in (1, 3):
        ours = treeshap.contributions(model, test, num_threads=threads)
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12)
    # a request's row or few take the kernel's row-by-row path (under 8 rows in a block of
    # 64): single rows, a handful, and a block of 64 followed by a short one
    for lo, hi in [(i, i + 1) for i in range(0, 600, 37)] + [(0, 5), (100, 107), (200, 270)]:
        ours = treeshap.contributions(model, test.iloc[lo:hi])
        np.testing.assert_allclose(ours, theirs[lo:hi], rtol=0, atol=1e-12)
    kinds = {t.decision_type for t in model.booster.trees_to_dataframe().itertuples()}
    assert {"<=", "=="} <= kinds  # both kinds of split were exercised


def test_trees_of_more_than_64_splits_go_row_block_by_row_block():
    """A row's way through a tree is one 64-bit word in the shared pass: bigger trees take
    the row-block kernel, with the same values."""
    model, test = _split_kinds_model({"num_leaves": 90, "max_depth": 9, "min_data_in_leaf": 3})
    tables = treeshap._tables(model)
    assert tables.usable and tables.shared is None
    assert max(t["num_leaves"] for t in model.booster.dump_model()["tree_info"]) > 65
    np.testing.assert_allclose(treeshap.contributions(model, test, num_threads=2),
                               model.booster.predict(model.frame(test), pred_contrib=True),
                               rtol=0, atol=1e-12)


def test_batch_treeshap_falls_back_to_lightgbm_for_deep_paths(monkeypatch):
    model, test = _split_kinds_model({})
    monkeypatch.setattr(treeshap, "_SHAP_MAX_PATH", 2)
    assert not treeshap._ShapTables(model.booster).usable
    np.testing.assert_array_equal(treeshap.contributions(model, test),
                                  model.booster.predict(model.frame(test), pred_contrib=True))



@pytest.mark.parametrize("params", [{}, {"zero_as_missing": True}, {"use_missing": False}],
                         ids=["nan-missing", "zero-missing", "no-missing"])
def test_raw_scores_are_lightgbms_to_the_bit(params):
    model, test = _split_kinds_model(params)
    theirs = model.booster.predict(model.frame(test), raw_score=True)
    for threads in (1, 3):
        np.testing.assert_array_equal(treeshap.raw_scores(model, test, num_threads=threads),
                                      theirs)
    assert treeshap._tables(model).heap is not None  # the level-by-level walk gave them
    x = model.matrix(test)  # a ready matrix gives the same as the frame
    np.testing.assert_array_equal(treeshap.raw_scores(model, x), theirs)
    np.testing.assert_array_equal(model.raw(test), theirs)
    for lo, hi in [(0, 1), (0, 4), (5, 38), (100, 164)]:  # a request's rows; blocks, rests
        np.testing.assert_array_equal(treeshap.raw_scores(model, x[lo:hi]), theirs[lo:hi])


def test_raw_scores_read_odd_category_codes_as_lightgbm_does():
    """A matrix handed over directly may hold any number where a category code goes:
    LightGBM truncates it to an int, sends NaN and negatives right, and (-1, 0) is
    category 0. Both walks must agree with it on every such value."""
    model, test = _split_kinds_model({})
    x = model.matrix(test)
    j = model.features.index("c")
    odd = [-0.5, -0.99, -1.0, -3.0, 2.7, 7.99, 8.0, 31.5, 32.0, 100.0, 1e-40, -1e-40,
           np.nan, 6.0, 0.0]
    x[:, j] = np.resize(odd, len(x))
    theirs = model.booster.predict(x, raw_score=True)
    np.testing.assert_array_equal(treeshap.raw_scores(model, x), theirs)


def test_deep_trees_walk_node_by_node(monkeypatch):
    model, test = _split_kinds_model({"zero_as_missing": True})
    monkeypatch.setattr(treeshap, "_HEAP_MAX_DEPTH", 2)
    model._shap_tables = None
    assert treeshap._tables(model).heap is None
    np.testing.assert_array_equal(treeshap.raw_scores(model, test, num_threads=2),
                                  model.booster.predict(model.frame(test), raw_score=True))


@pytest.mark.parametrize("params", [{}, {"zero_as_missing": True}, {"use_missing": False}],
                         ids=["nan-missing", "zero-missing", "no-missing"])
@pytest.mark.parametrize(("varying", "group"), [(["a", "c"], 7), (["b", "z", "k"], 7),
                                                ([], 7), (["a", "b", "z", "k", "c"], 70)],
                         ids=["numeric-and-categorical", "numeric", "none", "all-two-words"])
def test_grouped_walk_gives_lightgbms_raw_scores(varying, group, params):
    """The slot search's walk: runs of rows that share every column but ``varying`` (each a
    lead's row with its slot columns changed). A run goes through each tree as a set of rows
    divided only by the varying columns' splits; the scores must still be LightGBM's, to the
    bit, whatever the split kinds and missing-value rules (the rows hold NaN, zeros, values
    on thresholds and unseen categories), runs longer than one 64-bit word, and threads."""
    model, test = _split_kinds_model(params)
    x = model.matrix(test)
    k = len(x) // group
    lead = x[:k]  # each run's row; its varying columns come from other rows of the test
    cols = np.array([model.features.index(f) for f in varying], dtype=np.int64)
    vals = x[: k * group][:, cols].reshape(k, group, len(cols))
    runs = np.repeat(lead, group, axis=0)  # the runs laid out in full, for LightGBM
    runs[:, cols] = vals.reshape(k * group, len(cols))
    theirs = model.booster.predict(runs, raw_score=True).reshape(k, group)
    for threads in (1, 3):
        np.testing.assert_array_equal(
            treeshap.raw_scores_runs(model, lead, vals, cols, num_threads=threads), theirs)
    np.testing.assert_array_equal(model.predict_proba_runs(lead, vals, cols),
                                  model.predict_proba(runs).reshape(k, group))


def test_constant_trees_count_in_raw_scores_and_the_base_value():
    rng = np.random.default_rng(3)
    df = pd.DataFrame({"a": rng.normal(size=60)})
    y = (df["a"] > 0).astype(int)
    # a first tree that cannot split (no gain is big enough): LightGBM keeps it
    # as a one-leaf tree holding the average; real trees follow
    booster = lgb.train({"objective": "binary", "min_gain_to_split": 1e9, "verbosity": -1,
                         "num_threads": 1}, lgb.Dataset(df, y), num_boost_round=1,
                        keep_training_booster=True)
    booster = lgb.train({"objective": "binary", "min_data_in_leaf": 5, "verbosity": -1,
                         "num_threads": 1}, lgb.Dataset(df, y), num_boost_round=3,
                        init_model=booster)
    kinds = ["split_feature" not in t["tree_structure"] for t in booster.dump_model()["tree_info"]]
    assert kinds[0] and not kinds[-1]
    model = LeadModel("t", booster=booster, features=["a"], categories={},
                      calibrator=Calibrator("none"))
    np.testing.assert_array_equal(treeshap.raw_scores(model, df),
                                  booster.predict(df, raw_score=True))
    np.testing.assert_allclose(treeshap.contributions(model, df),
                               booster.predict(df, pred_contrib=True), rtol=0, atol=1e-12)
