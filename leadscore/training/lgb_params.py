"""The LightGBM settings an experiment may change, checked before any data is read.

An allow-list, not a deny-list: leadscore calibrates one raw margin per lead and explains it by
exact TreeSHAP reasons, which fits plain binary gradient-boosted trees and nothing else. A
setting LightGBM accepts that changes the trees' meaning (linear leaves, averaged random-forest
output, other objectives) would train and register a model leadscore cannot score or explain
as intended, so only settings known to leave the trees' meaning alone pass. Every LightGBM
alias is renamed to the one name the model specs use, so an alias can never lose silently
against a spec's own value (LightGBM keeps one of two aliases and ignores the other).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Setting:
    kind: type  # float, int, bool or str
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself is not allowed
    choices: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()


SUPPORTED: dict[str, Setting] = {
    "objective": Setting(str, choices=("binary",)),
    "boosting": Setting(str, choices=("gbdt",), aliases=("boosting_type", "boost")),
    "data_sample_strategy": Setting(str, choices=("bagging", "goss")),
    "learning_rate": Setting(float, 0.0, low_open=True, aliases=("shrinkage_rate", "eta")),
    "num_leaves": Setting(int, 2, 131072, aliases=("num_leaf", "max_leaves", "max_leaf",
                                                   "max_leaf_nodes")),
    "max_depth": Setting(int, -1),
    "min_data_in_leaf": Setting(int, 0, aliases=("min_data_per_leaf", "min_data",
                                                 "min_child_samples", "min_samples_leaf")),
    "min_sum_hessian_in_leaf": Setting(float, 0.0, aliases=(
        "min_sum_hessian_per_leaf", "min_sum_hessian", "min_hessian", "min_child_weight")),
    "feature_fraction": Setting(float, 0.0, 1.0, low_open=True,
                                aliases=("sub_feature", "colsample_bytree")),
    "feature_fraction_bynode": Setting(float, 0.0, 1.0, low_open=True,
                                       aliases=("sub_feature_bynode", "colsample_bynode")),
    "bagging_fraction": Setting(float, 0.0, 1.0, low_open=True,
                                aliases=("sub_row", "subsample", "bagging")),
    "pos_bagging_fraction": Setting(float, 0.0, 1.0, low_open=True,
                                    aliases=("pos_sub_row", "pos_subsample", "pos_bagging")),
    "neg_bagging_fraction": Setting(float, 0.0, 1.0, low_open=True,
                                    aliases=("neg_sub_row", "neg_subsample", "neg_bagging")),
    "bagging_freq": Setting(int, 0, aliases=("subsample_freq",)),
    "top_rate": Setting(float, 0.0, 1.0, low_open=True),
    "other_rate": Setting(float, 0.0, 1.0),
    "lambda_l1": Setting(float, 0.0, aliases=("reg_alpha", "l1_regularization")),
    "lambda_l2": Setting(float, 0.0, aliases=("reg_lambda", "lambda", "l2_regularization")),
    "min_gain_to_split": Setting(float, 0.0, aliases=("min_split_gain",)),
    "max_delta_step": Setting(float, aliases=("max_tree_output", "max_leaf_output")),
    "path_smooth": Setting(float, 0.0),
    "extra_trees": Setting(bool, aliases=("extra_tree",)),
    "max_bin": Setting(int, 2, aliases=("max_bins",)),
    "min_data_in_bin": Setting(int, 1),
    "use_missing": Setting(bool),
    "zero_as_missing": Setting(bool),
    "max_cat_threshold": Setting(int, 1),
    "cat_smooth": Setting(float, 0.0),
    "cat_l2": Setting(float, 0.0),
    "max_cat_to_onehot": Setting(int, 1),
    "min_data_per_group": Setting(int, 1),
    "is_unbalance": Setting(bool, aliases=("unbalance", "unbalanced_sets")),
    "scale_pos_weight": Setting(float, 0.0, low_open=True),
    # leadscore's own: the trainer passes these to lgb.train itself
    "num_boost_round": Setting(int, 1, aliases=(
        "num_iterations", "num_iteration", "n_iter", "num_tree", "num_trees", "num_round",
        "num_rounds", "nrounds", "n_estimators", "max_iter")),
    "early_stopping_rounds": Setting(int, 1, aliases=("early_stopping_round", "early_stopping",
                                                      "n_iter_no_change")),
    # the leaf size in leads, turned into LightGBM's min_data_in_leaf (rows) by the trainer
    "min_leads_in_leaf": Setting(int, 1),
    # rows weighted by the age of their cutoff, halving every this many days (the trainer)
    "recency_half_life_days": Setting(float, 0.0, low_open=True),
}

#: settings LightGBM has that leadscore refuses, with the reason
REFUSED: dict[str, str] = {
    "linear_tree": "leadscore scores trees by their leaf values (its compiled tree walk and "
                   "exact TreeSHAP reasons); linear leaf models would be ignored, and LightGBM "
                   "gives no TreeSHAP reasons for them",
    "num_class": "leadscore models are binary (one margin, calibrated to a probability)",
    "sigmoid": "leadscore calibrates the raw margin itself",
}
for _alias in ("linear_trees",):
    REFUSED[_alias] = REFUSED["linear_tree"]
for _alias in ("objective_type", "app", "application", "loss"):
    REFUSED[_alias] = "name the objective 'objective' (it must be binary)"
for _alias in ("num_classes",):
    REFUSED[_alias] = REFUSED["num_class"]

#: settings leadscore makes itself on every run, with where to change them instead
MANAGED: dict[str, str] = {
    **dict.fromkeys(("seed", "random_seed", "random_state"), "use the config's top-level seed"),
    **dict.fromkeys(("monotone_constraints", "mc", "monotone_constraint",
                     "monotonic_cst", "monotone_constraints_method",
                     "monotone_constraining_method", "mc_method"),
                    "the model spec's monotone features set them"),
    **dict.fromkeys(("num_threads", "num_thread", "nthread", "nthreads", "n_jobs",
                     "deterministic", "force_col_wise", "force_row_wise"),
                    "leadscore sets it for reproducible runs"),
    **dict.fromkeys(("metric", "metrics", "metric_types"),
                    "early stopping uses leadscore's (log loss first)"),
    **dict.fromkeys(("verbosity", "verbose"), "leadscore keeps LightGBM quiet"),
}

_ALIAS = {a: name for name, s in SUPPORTED.items() for a in (name, *s.aliases)}
_KIND_WORD = {float: "a number", int: "an integer", bool: "true or false", str: "a string"}


def canonical(key: str) -> str:
    """The name leadscore uses for a LightGBM setting, or ValueError naming why not."""
    if key in _ALIAS:
        return _ALIAS[key]
    if key in REFUSED:
        raise ValueError(f"{key} is not supported: {REFUSED[key]}")
    if key in MANAGED:
        raise ValueError(f"{key} cannot be set in params: {MANAGED[key]}")
    raise ValueError(f"{key} is not a LightGBM setting leadscore supports (supported: "
                     f"{', '.join(sorted(SUPPORTED))})")


def check_value(name: str, value):
    """``value`` as the type LightGBM expects for setting ``name`` (booleans stay booleans),
    or ValueError naming the setting."""
    s = SUPPORTED[name]
    bad = ValueError(f"{name} must be {_KIND_WORD[s.kind]}, got {value!r}")
    if s.kind is bool:
        if isinstance(value, bool):
            return value
        words = {"true": True, "+": True, "false": False, "-": False}
        if isinstance(value, str) and value.strip().lower() in words:
            return words[value.strip().lower()]
        raise bad
    if s.kind is str:
        if not isinstance(value, str) or value not in s.choices:
            raise ValueError(f"{name} must be one of {', '.join(s.choices)}, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad
    if not math.isfinite(value):
        raise bad
    if s.kind is int:
        if value != int(value):
            raise bad
        value = int(value)
    else:
        value = float(value)
    if s.low is not None and (value < s.low or (s.low_open and value == s.low)):
        raise ValueError(f"{name} must be {'above' if s.low_open else 'at least'} "
                         f"{s.low:g}, got {value!r}")
    if s.high is not None and value > s.high:
        raise ValueError(f"{name} must be at most {s.high:g}, got {value!r}")
    return value


def normalize(params: dict) -> dict:
    """``params`` under leadscore's names with checked values; ValueError naming the first
    setting that is not supported, given twice (under two aliases) or of the wrong type."""
    out: dict = {}
    given: dict[str, str] = {}
    for key, value in params.items():
        name = canonical(key)
        if name in given:
            raise ValueError(f"{key} and {given[name]} are the same setting ({name}); "
                             "give it once")
        given[name] = key
        out[name] = check_value(name, value)
    if out.get("is_unbalance") and "scale_pos_weight" in out:
        raise ValueError("is_unbalance and scale_pos_weight cannot both be set")
    return out
