"""How good are the recommended contact slots? Versus the advisors' own (logged) policy.

For each held-out logged attempt the recommender picks a slot and channel in the next 72 hours
for the lead as it was just before the attempt. Two ways to judge that choice:

- **with the simulator's truth** (evaluation only): the true response probability of the
  recommended slot, of the logged one, and of the best allowed slot (the oracle); the figure of
  merit is ``(model - logged) / (oracle - logged)``;
- **without truth** (what works on a real contact log): a doubly robust off-policy estimate.
  Exact actions (channel x local hour-of-week, over 300 of them) almost never coincide with the
  recommendation, and a DR estimate with no matches is just the outcome model's own opinion.
  So actions are coarsened to (channel, part of the day) — 18 of them — and the estimate is
  ``V = mean[q(x, pi(x)) + 1{c(a) = c(pi(x))} / p(c(a)|x) * (r - q(x, a))]``: the slot model's
  value of the recommended slot, corrected by the model's error on logged attempts in the same
  coarse action (a kernel-style DR for large action spaces). The logging propensity
  ``p(c(a)|x)`` is learned from the log (a multiclass LightGBM on the lead's state and dealer),
  since real advisors' choices depend on the lead. Exact DR is unbiased when either the
  propensities or the outcome model is right; the coarsening adds a small bias of its own (the
  correction comes from neighbouring hours of the same part of the day), which the benchmark
  measures against the truth.
"""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd

from leadscore.artifact import LeadModel
from leadscore.features.catalog import DAYPARTS
from leadscore.features.slots import local_hour_weekday
from leadscore.schema import CHANNELS, DEFAULT_TZ
from leadscore.scoring.contact_policy import (
    SLOT_FEATURES,
    RulesFile,
    recommend_matrix,
    slot_grid,
)

#: The lead's state the logging-policy model may look at (whatever of it the log carries).
_POLICY_INPUTS = (
    "dealer_id", "source", "lead_age_days", "night_share_30d", "contact_attempts",
    "contact_response_rate", "phone_attempts", "message_attempts", "days_since_contact",
    "events_7d", "high_intent_30d",
)
_BOUNDS = np.array([b for _, b in DAYPARTS])
N_ACTIONS = len(CHANNELS) * len(DAYPARTS)


def action_id(channel, hour) -> np.ndarray:
    """The coarse action (channel, part of the local day) as an integer in [0, N_ACTIONS)."""
    ch = pd.Categorical(np.asarray(channel, dtype=object), categories=list(CHANNELS)).codes
    if (ch < 0).any():
        raise ValueError("unknown channel in the contact log")
    part = np.searchsorted(_BOUNDS, np.asarray(hour, dtype=float), side="right")
    return ch.astype(np.int64) * len(DAYPARTS) + part


class LoggingPolicy:
    """P(coarse action | lead state, dealer) of the advisors, learned from their log."""

    def __init__(self, booster: lgb.Booster | None, inputs: list[str],
                 categories: dict[str, list], prior: np.ndarray):
        self.booster, self.inputs, self.categories, self.prior = (booster, inputs, categories,
                                                                  prior)

    @classmethod
    def fit(cls, log: pd.DataFrame, seed: int = 0, max_rows: int = 60_000) -> LoggingPolicy:
        """``log``: attempts with channel, slot_hour and the lead's state before each."""
        if len(log) > max_rows:
            log = log.sample(max_rows, random_state=seed)
        y = action_id(log["channel"].astype(str), log["slot_hour"])
        prior = (np.bincount(y, minlength=N_ACTIONS) + 1.0) / (len(y) + N_ACTIONS)
        inputs = [c for c in _POLICY_INPUTS if c in log]
        X, cats = _frame(log, inputs, None)
        if len(log) < 500 or not inputs:
            return cls(None, inputs, cats, prior)
        booster = lgb.train(
            {"objective": "multiclass", "num_class": N_ACTIONS, "learning_rate": 0.1,
             "num_leaves": 15, "min_data_in_leaf": 100, "lambda_l2": 1.0, "verbosity": -1,
             "num_threads": 2, "seed": seed, "deterministic": True, "force_col_wise": True},
            lgb.Dataset(X, y), num_boost_round=60)
        return cls(booster, inputs, cats, prior)

    def propensity(self, frame: pd.DataFrame, action: np.ndarray) -> np.ndarray:
        if self.booster is None:
            return self.prior[action]
        X, _ = _frame(frame, self.inputs, self.categories)
        p = self.booster.predict(X, num_threads=2)
        return p[np.arange(len(frame)), action]


def _frame(df: pd.DataFrame, inputs: list[str], categories: dict[str, list] | None):
    """The model frame; categorical columns keep the categories seen in training. A missing
    value (a lead without a source, say) stays missing, which LightGBM treats as such: it is
    no category, and sorting it among the strings would fail."""
    out, cats = {}, {}
    for c in inputs:
        col = df[c]
        if c == "dealer_id" or not pd.api.types.is_numeric_dtype(col):
            known = (categories or {}).get(c) or sorted(
                col.astype("object").dropna().astype(str).unique().tolist())
            out[c] = pd.Categorical(col.astype(str), categories=known)
            cats[c] = known
        else:
            out[c] = col.to_numpy(dtype=float)
    return pd.DataFrame(out, index=range(len(df))), cats


def doubly_robust_terms(q_policy: np.ndarray, q_logged: np.ndarray, reward: np.ndarray,
                        match: np.ndarray, propensity: np.ndarray, clip: float = 1e-2
                        ) -> np.ndarray:
    """Per logged attempt, its doubly robust term; their mean is the policy's value and their
    standard error the estimate's. Propensities are clipped at ``clip`` (a bounded weight
    trades a little bias for much less variance)."""
    w = np.where(match, 1.0 / np.maximum(propensity, clip), 0.0)
    return q_policy + w * (reward - q_logged)


def doubly_robust(q_policy: np.ndarray, q_logged: np.ndarray, reward: np.ndarray,
                  match: np.ndarray, propensity: np.ndarray, clip: float = 1e-2) -> float:
    """Doubly robust value of a deterministic policy from logged bandit feedback."""
    return float(np.mean(doubly_robust_terms(q_policy, q_logged, reward, match, propensity,
                                             clip)))


def evaluate(
    model: LeadModel,
    attempts: pd.DataFrame,
    rules: RulesFile,
    policy: LoggingPolicy,
    truth_leads: pd.DataFrame | None = None,
    truth_contacts: pd.DataFrame | None = None,
    sample: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """Policy metrics on held-out attempts (rows of the slot training set)."""
    if len(attempts) > sample:
        attempts = attempts.sample(sample, random_state=seed)
    attempts = attempts.reset_index(drop=True)
    tz = attempts["tz"].astype("object").fillna(DEFAULT_TZ).astype(str)
    rec = recommend_matrix(model, model.matrix(attempts, absent=SLOT_FEATURES),
                           attempts["as_of"], tz, attempts["dealer_id"].astype(str), None,
                           rules, top=0, reasons=False)
    ok = np.array([c is not None for c in rec.best_channel])
    attempts, tz = attempts[ok].reset_index(drop=True), tz[ok].reset_index(drop=True)
    rec_channel = rec.best_channel[ok]
    q_policy = rec.p_response[ok]
    rec_hour, rec_wd = local_hour_weekday(pd.Series(rec.best_slot_start[ok]), tz)
    q_logged = model.predict_proba(attempts)
    a_pol = action_id(rec_channel, rec_hour)
    a_log = action_id(attempts["channel"].astype(str), attempts["slot_hour"])
    prop = policy.propensity(attempts, a_log)
    r = attempts["label"].to_numpy(dtype=float)
    terms = doubly_robust_terms(q_policy, q_logged, r, a_pol == a_log, prop)
    out = {
        "policy_n": float(len(attempts)),
        "policy_logged_rate": float(r.mean()),
        "policy_dm_estimate": float(q_policy.mean()),
        "policy_dr_estimate": float(terms.mean()),
        "policy_dr_se": float(terms.std(ddof=1) / np.sqrt(len(terms))) if len(terms) > 1
        else float("nan"),
        "policy_match_share": float((a_pol == a_log).mean()),
    }
    if truth_leads is not None and truth_contacts is not None:
        out.update(_with_truth(attempts, tz, rec_channel, rec_hour, rec_wd, rules, truth_leads,
                               truth_contacts))
    return out


def _with_truth(attempts, tz, rec_channel, rec_hour, rec_wd, rules, truth_leads,
                truth_contacts):
    from leadscore.simulate import true_response_prob

    tc = truth_contacts.copy()
    tc["ts"] = pd.to_datetime(tc["ts"], utc=True)
    m = attempts[["lead_id", "as_of", "channel"]].assign(channel=lambda d: d["channel"].astype(
        str)).merge(tc.rename(columns={"ts": "as_of"})[["lead_id", "as_of", "channel",
                                                        "p_response"]],
                    on=["lead_id", "as_of", "channel"], how="left")
    logged = m["p_response"].to_numpy(dtype=float)
    alive = logged > 0  # a lead gone dark answers nothing, whatever the slot
    lat = truth_leads.set_index("lead_id").loc[attempts["lead_id"]].reset_index()
    p_rec = true_response_prob(lat, rec_hour.astype(int), rec_wd.astype(int),
                               np.asarray(rec_channel, dtype=object)) * alive
    # the best allowed slot by the truth; slot grids depend on the cutoff's next full hour
    oracle = np.zeros(len(attempts))
    keys = pd.DataFrame({
        "first": pd.to_datetime(attempts["as_of"], utc=True).dt.ceil("h"), "tz": tz,
        "rules": [d if d in rules.dealers else "" for d in attempts["dealer_id"].astype(str)]})
    for (first, zone, rk), idx in keys.groupby(["first", "tz", "rules"]).indices.items():
        g = slot_grid(pd.Timestamp(first), zone, rules.dealers.get(rk, rules.default))
        if g.empty:
            continue
        G = len(g)
        p = true_response_prob(lat.iloc[np.repeat(idx, G)],
                               np.tile(g["slot_hour"].to_numpy(dtype=int), len(idx)),
                               np.tile(g["slot_weekday"].to_numpy(dtype=int), len(idx)),
                               np.tile(g["channel"].to_numpy(dtype=object), len(idx)))
        oracle[idx] = p.reshape(len(idx), G).max(axis=1) * alive[idx]
    model_v, logged_v, oracle_v = float(p_rec.mean()), float(np.nanmean(logged)), float(
        oracle.mean())
    denom = oracle_v - logged_v
    return {
        "policy_true_model": model_v,
        "policy_true_logged": logged_v,
        "policy_true_oracle": oracle_v,
        "policy_gain_share": (model_v - logged_v) / denom if denom > 0 else float("nan"),
    }
