"""The optional accelerators (``leadscore.fast``) against LightGBM itself: where a model uses
them they give its scores and reasons, so they must give LightGBM's own numbers on every kind
of split and missing-value rule; where they do not, or are turned off, LightGBM scores."""

from __future__ import annotations

import logging

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from leadscore import fast
from leadscore.artifact import Calibrator, LeadModel
from leadscore.fast import Accelerated, kernels


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


def _accelerated(model: LeadModel) -> Accelerated:
    acc, why = Accelerated.for_model(model)
    assert acc is not None, why
    return acc


@pytest.mark.parametrize("shared_from", [4, 10**9], ids=["shared-ways", "row-blocks"])
@pytest.mark.parametrize("params", [{}, {"zero_as_missing": True}, {"use_missing": False}],
                         ids=["nan-missing", "zero-missing", "no-missing"])
def test_treeshap_kernels_equal_lightgbm_pred_contrib(params, shared_from, monkeypatch):
    """Both kernels: rows in blocks through every tree (requests' few rows), and tree by tree
    with each distinct way through a tree computed once (batches)."""
    monkeypatch.setattr(kernels, "_SHARED_MIN_ROWS", shared_from)
    model, test = _split_kinds_model(params)
    acc = _accelerated(model)
    assert acc.tables.max_path <= 5 and acc.tables.shared is not None
    x = model.matrix(test)
    theirs = model.booster.predict(model.frame(test), pred_contrib=True)
    for threads in (1, 3):
        np.testing.assert_allclose(acc.contributions(x, num_threads=threads), theirs,
                                   rtol=0, atol=1e-12)
    # a request's row or few take the kernel's row-by-row path (under 8 rows in a block of
    # 64): single rows, a handful, and a block of 64 followed by a short one
    for lo, hi in [(i, i + 1) for i in range(0, 600, 37)] + [(0, 5), (100, 107), (200, 270)]:
        np.testing.assert_allclose(acc.contributions(x[lo:hi]), theirs[lo:hi],
                                   rtol=0, atol=1e-12)
    kinds = {t.decision_type for t in model.booster.trees_to_dataframe().itertuples()}
    assert {"<=", "=="} <= kinds  # both kinds of split were exercised


def test_trees_of_more_than_64_splits_go_row_block_by_row_block():
    """A row's way through a tree is one 64-bit word in the shared pass: bigger trees take
    the row-block kernel, with the same values."""
    model, test = _split_kinds_model({"num_leaves": 90, "max_depth": 9, "min_data_in_leaf": 3})
    acc = _accelerated(model)
    assert acc.tables.shared is None
    assert max(t["num_leaves"] for t in model.booster.dump_model()["tree_info"]) > 65
    np.testing.assert_allclose(acc.contributions(model.matrix(test), num_threads=2),
                               model.booster.predict(model.frame(test), pred_contrib=True),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("params", [{}, {"zero_as_missing": True}, {"use_missing": False}],
                         ids=["nan-missing", "zero-missing", "no-missing"])
def test_raw_scores_are_lightgbms_to_the_bit(params):
    model, test = _split_kinds_model(params)
    acc = _accelerated(model)
    theirs = model.booster.predict(model.frame(test), raw_score=True)
    x = model.matrix(test)
    for threads in (1, 3):
        np.testing.assert_array_equal(acc.raw(x, num_threads=threads), theirs)
    for lo, hi in [(0, 1), (0, 4), (5, 38), (100, 164)]:  # a request's rows; blocks, rests
        np.testing.assert_array_equal(acc.raw(x[lo:hi]), theirs[lo:hi])


def test_raw_scores_read_odd_category_codes_as_lightgbm_does():
    """A matrix handed over directly may hold any number where a category code goes:
    LightGBM truncates it to an int, sends NaN and negatives right, and (-1, 0) is
    category 0. The kernels must agree with it on every such value."""
    model, test = _split_kinds_model({})
    x = model.matrix(test)
    j = model.features.index("c")
    odd = [-0.5, -0.99, -1.0, -3.0, 2.7, 7.99, 8.0, 31.5, 32.0, 100.0, 1e-40, -1e-40,
           np.nan, 6.0, 0.0]
    x[:, j] = np.resize(odd, len(x))
    acc = _accelerated(model)
    np.testing.assert_array_equal(acc.raw(x), model.booster.predict(x, raw_score=True))
    np.testing.assert_allclose(acc.contributions(x), model.booster.predict(x, pred_contrib=True),
                               rtol=0, atol=1e-12)


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
    on thresholds and unseen categories), runs longer than one 64-bit word, and threads.
    The reference path (LightGBM over the laid-out rows) gives the same probabilities."""
    model, test = _split_kinds_model(params)
    x = model.matrix(test)
    k = len(x) // group
    lead = x[:k]  # each run's row; its varying columns come from other rows of the test
    cols = np.array([model.features.index(f) for f in varying], dtype=np.int64)
    vals = x[: k * group][:, cols].reshape(k, group, len(cols))
    runs = np.repeat(lead, group, axis=0)  # the runs laid out in full, for LightGBM
    runs[:, cols] = vals.reshape(k * group, len(cols))
    theirs = model.booster.predict(runs, raw_score=True).reshape(k, group)
    acc = _accelerated(model)
    for threads in (1, 3):
        np.testing.assert_array_equal(acc.raw_runs(lead, vals, cols, num_threads=threads),
                                      theirs)
    for enabled in (True, False):
        assert model.accelerate(enabled).startswith("accelerated" if enabled else "lightgbm")
        np.testing.assert_array_equal(model.predict_proba_runs(lead, vals, cols),
                                      model.calibrator(theirs))


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
    acc = _accelerated(model)
    x = model.matrix(df)
    np.testing.assert_array_equal(acc.raw(x), booster.predict(df, raw_score=True))
    np.testing.assert_allclose(acc.contributions(x), booster.predict(df, pred_contrib=True),
                               rtol=0, atol=1e-12)


# -- the choice of path ---------------------------------------------------------------------


def _saved(tmp_path, params=None) -> tuple[LeadModel, pd.DataFrame]:
    model, test = _split_kinds_model(params or {})
    model.save(tmp_path / "m")
    return model, test


def _same_as_lightgbm(model: LeadModel, test: pd.DataFrame) -> None:
    """The model's scores and reasons, frame and matrix, 1 and 2 threads: LightGBM's."""
    x = model.matrix(test)
    raw = model.booster.predict(model.frame(test), raw_score=True)
    contrib = model.booster.predict(model.frame(test), pred_contrib=True)
    for threads in (1, 2):
        np.testing.assert_allclose(model.raw(test, num_threads=threads), raw, rtol=0, atol=1e-9)
        np.testing.assert_allclose(model.raw(x[:1], num_threads=threads), raw[:1],
                                   rtol=0, atol=1e-9)
        np.testing.assert_allclose(model.contributions(x, num_threads=threads), contrib,
                                   rtol=0, atol=1e-9)
        np.testing.assert_allclose(model.contributions(test.iloc[:1]), contrib[:1],
                                   rtol=0, atol=1e-9)
    np.testing.assert_allclose(model.predict_proba(test), model.calibrator(raw),
                               rtol=0, atol=1e-9)


def test_a_loaded_model_is_accelerated_once_verified(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv(fast.ENV, raising=False)
    _, test = _saved(tmp_path)
    model = LeadModel.load(tmp_path / "m")
    with caplog.at_level(logging.WARNING):
        model.warm_up()
    assert model.scoring_path == "accelerated"
    assert model._fast is not None and not caplog.records
    _same_as_lightgbm(model, test)


@pytest.mark.parametrize("value", ["0", "false", "off"])
def test_accelerate_0_scores_by_lightgbm(tmp_path, monkeypatch, value):
    """``LEADSCORE_ACCELERATE=0``: read when the model is loaded; the kernels are never
    built (the verification would fail the test if it ran) and scores are LightGBM's."""
    _, test = _saved(tmp_path)
    monkeypatch.setenv(fast.ENV, value)
    model = LeadModel.load(tmp_path / "m")
    monkeypatch.delenv(fast.ENV)  # read once, at load: a later change does not count

    def refuse(*a, **kw):
        raise AssertionError("the kernels were consulted")

    monkeypatch.setattr(Accelerated, "for_model", refuse)
    model.warm_up()
    assert model.scoring_path == "lightgbm: accelerators off"
    _same_as_lightgbm(model, test)
    assert not fast.enabled({fast.ENV: value}) and fast.enabled({}) and \
        fast.enabled({fast.ENV: "1"})


def test_a_model_the_kernels_get_wrong_falls_back_with_one_warning(tmp_path, monkeypatch,
                                                                   caplog):
    """Kernels that disagree with LightGBM on the sample rows (simulated: every leaf's
    value off by 1e-6 in the compiled tables) are not used: the model scores by LightGBM, and
    one warning names the model and the reason."""
    monkeypatch.delenv(fast.ENV, raising=False)
    _, test = _saved(tmp_path)
    real = kernels.Tables.__init__

    def off_by_a_little(self, booster):
        real(self, booster)
        self.packed[1][self.arrays["feat"] < 0] += 1e-6  # every leaf's value

    monkeypatch.setattr(kernels.Tables, "__init__", off_by_a_little)
    model = LeadModel.load(tmp_path / "m")
    with caplog.at_level(logging.WARNING, logger="leadscore.artifact"):
        model.warm_up()
        _same_as_lightgbm(model, test)
        model.warm_up()
    assert model._fast is None
    assert model.scoring_path.startswith("lightgbm: raw scores")
    assert "differ from LightGBM" in model.scoring_path
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and warnings[0].startswith("t: scored by LightGBM")


@pytest.mark.parametrize(("limit", "reason"), [
    ("_SHAP_MAX_PATH", "lightgbm: a leaf's path has 5 distinct features (the tabulated "
                       "TreeSHAP takes at most 2)"),
    ("_HEAP_MAX_DEPTH", "lightgbm: trees deeper than 2 levels"),
])
def test_trees_the_kernels_refuse_fall_back_with_the_reason(monkeypatch, caplog, limit,
                                                            reason):
    """Leaf paths longer than the tabulated TreeSHAP takes, trees deeper than the level
    walk takes: refused before any row is scored; LightGBM scores the model."""
    model, test = _split_kinds_model({})
    monkeypatch.setattr(kernels, limit, 2)
    with caplog.at_level(logging.WARNING, logger="leadscore.artifact"):
        path = model.accelerate(True)
    assert path.startswith(reason)
    assert len(caplog.records) == 1 and "t: scored by LightGBM" in caplog.text
    _same_as_lightgbm(model, test)


def test_a_model_built_in_memory_scores_by_lightgbm_unless_asked():
    model, test = _split_kinds_model({})
    assert model.scoring_path == "lightgbm: accelerators off"
    _same_as_lightgbm(model, test)
    assert model.accelerate(True) == "accelerated"
    _same_as_lightgbm(model, test)


@pytest.mark.parametrize("enabled", [True, False])
def test_spark_workers_follow_the_drivers_scoring_path(enabled, monkeypatch):
    """The Spark engine rebuilds the models in each worker from LightGBM text: they take
    the path the driver took (not LightGBM only because they were built in memory)."""
    from types import SimpleNamespace

    from leadscore.nightly import spark
    from leadscore.scoring import scorer

    model, test = _split_kinds_model({})  # not catalogue features: no real Scorer
    model.accelerate(enabled)
    key, blob = spark._payload(SimpleNamespace(models={"conversion": model}, rules=None,
                                                   intent=None))
    monkeypatch.setattr(scorer, "Scorer", lambda models, **kw: SimpleNamespace(models=models))
    monkeypatch.setattr(spark, "_worker_scorer", None)
    worker = spark._scorer_on_worker(key, SimpleNamespace(value=blob)).models["conversion"]
    assert worker.scoring_path == model.scoring_path
    _same_as_lightgbm(worker, test)


def test_numbers_beyond_a_dumped_infinite_threshold_go_lightgbms_way():
    """A split of NaN against every number has a threshold of +inf, which LightGBM's dump
    writes as 1e300: a number above 1e300 (or +inf) must still go the numbers' way."""
    rng = np.random.default_rng(3)
    n = 2000
    a = np.where(rng.random(n) < 0.5, np.nan, 0.0)
    df = pd.DataFrame({"a": a, "b": rng.normal(size=n)})
    y = (np.isnan(a) ^ (rng.random(n) < 0.1)).astype(int)
    booster = lgb.train({"objective": "binary", "verbosity": -1, "num_threads": 1,
                         "min_data_in_leaf": 5, "max_depth": 4}, lgb.Dataset(df, y),
                        num_boost_round=3)
    assert 1e300 in {t.threshold for t in booster.trees_to_dataframe().itertuples()}
    model = LeadModel("t", booster=booster, features=["a", "b"], categories={},
                      calibrator=Calibrator("none"))
    acc = _accelerated(model)
    x = np.array([[1e301, 0.5], [np.inf, -0.5], [1e300, 0.0], [0.0, 1.0], [np.nan, 0.0],
                  [-np.inf, 2.0], [1.7e308, -1.0]])
    for rows in (x, x[:1], x[1:2]):
        np.testing.assert_array_equal(acc.raw(rows), booster.predict(rows, raw_score=True))
        np.testing.assert_allclose(acc.contributions(rows),
                                   booster.predict(rows, pred_contrib=True), rtol=0, atol=1e-12)
    vals = x[:, :1][None]  # one run: the row x[3] with column a from every row
    np.testing.assert_array_equal(
        acc.raw_runs(x[3:4], vals, np.array([0])),
        booster.predict(np.column_stack([x[:, 0], np.full(len(x), 1.0)]),
                        raw_score=True)[None])
