"""How good are the recommended contact slots? Versus the advisors' own (logged) policy.

For each held-out logged attempt the recommender picks a slot and channel in the next 72 hours
for the lead as it was just before the attempt. Two ways to judge that choice:

- **with the simulator's truth** (evaluation only): the true response probability of the
  recommended slot, of the logged one, and of the best allowed slot (the oracle); the figure of
  merit is ``(model - logged) / (oracle - logged)``;
- **without truth** (what works on a real contact log): a doubly robust off-policy estimate.
  Actions are (channel, local hour-of-week); the logging policy's propensity is estimated from
  the log itself as the dealer's frequency of each action; the outcome model is the slot model.
  ``V = mean[q(x, pi(x)) + 1{a = pi(x)} / p(a|x) * (r - q(x, a))]`` — unbiased when either the
  propensities or the outcome model is right.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from leadscore.artifact import LeadModel
from leadscore.serving.contact_policy import RulesFile, recommend, slot_grid

HOURS_PER_WEEK = 168


def action_id(channel: pd.Series, weekday: np.ndarray, hour: np.ndarray) -> np.ndarray:
    ch = pd.Categorical(channel, categories=["phone", "wechat", "sms"]).codes.astype(np.int64)
    return ch * HOURS_PER_WEEK + (np.asarray(weekday) * 24 + np.asarray(hour)).astype(int)


def logging_propensity(log: pd.DataFrame) -> pd.DataFrame:
    """Empirical P(action | dealer) from a contact log with dealer_id, channel, slot_weekday,
    slot_hour. Returns columns dealer_id, action, propensity."""
    a = action_id(log["channel"].astype(str), log["slot_weekday"], log["slot_hour"])
    df = pd.DataFrame({"dealer_id": log["dealer_id"].to_numpy(), "action": a})
    counts = df.groupby(["dealer_id", "action"]).size().rename("n").reset_index()
    counts["propensity"] = counts["n"] / counts.groupby("dealer_id")["n"].transform("sum")
    return counts[["dealer_id", "action", "propensity"]]


def doubly_robust(q_policy: np.ndarray, q_logged: np.ndarray, reward: np.ndarray,
                  match: np.ndarray, propensity: np.ndarray, clip: float = 1e-3) -> float:
    """Doubly robust value of a deterministic policy from logged bandit feedback."""
    w = np.where(match, 1.0 / np.maximum(propensity, clip), 0.0)
    return float(np.mean(q_policy + w * (reward - q_logged)))


def evaluate(
    model: LeadModel,
    attempts: pd.DataFrame,
    rules: RulesFile,
    propensity: pd.DataFrame,
    truth_leads: pd.DataFrame | None = None,
    truth_contacts: pd.DataFrame | None = None,
    sample: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """Policy metrics on held-out attempts (rows of the slot training set)."""
    if len(attempts) > sample:
        attempts = attempts.sample(sample, random_state=seed)
    attempts = attempts.reset_index(drop=True)
    recs = recommend(model, attempts, None, rules)
    ok = np.array([r["best_channel"] is not None for r in recs])
    attempts, recs = attempts[ok].reset_index(drop=True), [r for r in recs if r["best_channel"]]
    rec_start = pd.Series([r["best_slot_start"] for r in recs])
    rec_channel = pd.Series([r["best_channel"] for r in recs])
    q_policy = np.array([r["p_response"] for r in recs])
    q_logged = model.predict_proba(attempts)
    tz = attempts["tz"].fillna("Asia/Shanghai").astype(str)
    rec_local = [ts.tz_convert(z) for ts, z in zip(rec_start, tz, strict=True)]
    rec_hour = np.array([t.hour for t in rec_local])
    rec_wd = np.array([t.weekday() for t in rec_local])
    a_pol = action_id(rec_channel, rec_wd, rec_hour)
    a_log = action_id(attempts["channel"].astype(str), attempts["slot_weekday"],
                      attempts["slot_hour"])
    prop = attempts[["dealer_id"]].assign(action=a_log).merge(
        propensity, on=["dealer_id", "action"], how="left")["propensity"].fillna(0).to_numpy()
    r = attempts["label"].to_numpy(dtype=float)
    out = {
        "policy_n": float(len(attempts)),
        "policy_logged_rate": float(r.mean()),
        "policy_dm_estimate": float(q_policy.mean()),
        "policy_dr_estimate": doubly_robust(q_policy, q_logged, r, a_pol == a_log, prop),
        "policy_match_share": float((a_pol == a_log).mean()),
    }
    if truth_leads is not None and truth_contacts is not None:
        out.update(_with_truth(attempts, rec_channel, rec_hour, rec_wd, rules, truth_leads,
                               truth_contacts))
    return out


def _with_truth(attempts, rec_channel, rec_hour, rec_wd, rules, truth_leads, truth_contacts):
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
    p_rec = true_response_prob(lat, rec_hour, rec_wd, rec_channel.to_numpy()) * alive
    oracle = np.empty(len(attempts))
    for i in range(len(attempts)):
        g = slot_grid(pd.Timestamp(attempts["as_of"].iloc[i]),
                      str(attempts["tz"].iloc[i] or "Asia/Shanghai"),
                      rules.for_dealer(str(attempts["dealer_id"].iloc[i])))
        if g.empty:
            oracle[i] = 0.0
            continue
        p = true_response_prob(lat.iloc[[i]], g["slot_hour"].to_numpy(dtype=int),
                               g["slot_weekday"].to_numpy(dtype=int), g["channel"].to_numpy())
        oracle[i] = float(np.max(p)) * alive[i]
    model_v, logged_v, oracle_v = float(p_rec.mean()), float(np.nanmean(logged)), float(
        oracle.mean())
    denom = oracle_v - logged_v
    return {
        "policy_true_model": model_v,
        "policy_true_logged": logged_v,
        "policy_true_oracle": oracle_v,
        "policy_gain_share": (model_v - logged_v) / denom if denom > 0 else float("nan"),
    }
