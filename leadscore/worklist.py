"""The advisor's worklist: a night's scores as the lines an advisor works down.

Why a module: the nightly output is a table for a CRM; an advisor (and the demo) reads a list
ordered by what to do first: intent grade H → N (when the lead is expected to order), then the
lead score; each lead with its expected time to order, what changed since the last run, its
reasons and when and how to call, in the dealer's local time and the advisor's language.
"""

from __future__ import annotations

import json
import math

import pandas as pd

from leadscore import lang as language
from leadscore.scoring.contact_policy import local_label

#: grade → the horizon it stands for (days); N: not expected within 90 days
_GRADE_DAYS = {"H": 7, "A": 15, "B": 30, "C": 90}
_ORDER = {g: i for i, g in enumerate(("H", "A", "B", "C", "N"))}

_WORDS = {
    language.EN: {
        "score": "score", "expect": "expected order: within {d} days ({p:.0%})",
        "not_soon": "not expected to order within 90 days", "call": "call",
        "changed": "changed", "why": "why", "no_slot": "no slot in the next 72 h",
        "trend": {"rising": "rising", "falling": "falling", "steady": "steady",
                  "new": "new"},
    },
    language.ZH: {
        "score": "评分", "expect": "预计 {d} 天内下单（{p:.0%}）",
        "not_soon": "90 天内不太可能下单", "call": "联系", "changed": "变化", "why": "原因",
        "no_slot": "未来 72 小时没有合适时段",
        "trend": {"rising": "上升", "falling": "下降", "steady": "持平", "new": "新线索"},
    },
}


def order(scored: pd.DataFrame) -> pd.DataFrame:
    """The rows an advisor works first on top: intent grade H → N, then the lead score; rows
    without a lead score (owners scored for churn only) last."""
    rank = scored["intent_grade"].map(_ORDER).fillna(len(_ORDER))
    keyed = scored.assign(_rank=rank, _score=scored["lead_score"].fillna(-1))
    return keyed.sort_values(["_rank", "_score", "lead_id"],
                             ascending=[True, False, True]).drop(columns=["_rank", "_score"])


def _num(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def lines(scored: pd.DataFrame, top: int = 10, lang: str = language.EN,
          reasons: int = 3) -> list[str]:
    """The first ``top`` leads of :func:`order` as text lines in ``lang``: per lead a head line
    (grade, id, score and its change, expected time to order) and indented lines for when and
    how to call, what changed and up to ``reasons`` reasons (the run's own sentences)."""
    lang = language.check(lang, "lang")
    w = _WORDS[lang]
    out: list[str] = []
    for r in order(scored).head(top).to_dict("records"):
        grade = r.get("intent_grade") or "-"
        head = f"{grade}  {r['lead_id']}  {w['score']} {r.get('lead_score', '-')}"
        delta, trend = _num(r.get("score_delta")), r.get("trend")
        if trend in w["trend"]:
            head += (f"  {delta:+.0f} ({w['trend'][trend]})" if delta is not None
                     else f"  ({w['trend'][trend]})")
        days = _GRADE_DAYS.get(grade)
        p = _num(r.get(f"p_order_{days}d")) if days else None
        if days and p is not None:
            head += "  " + w["expect"].format(d=days, p=p)
        elif grade == "N":
            head += "  " + w["not_soon"]
        out.append(head)
        local = r.get("best_slot_local")
        channel = r.get("best_channel")
        if channel and isinstance(local, str) and local:
            words = language.CHANNEL_WORDS[lang]
            out.append(f"   {w['call']}: {words.get(channel, channel)}, {local_label(local)}")
        elif "best_channel" in r:
            out.append(f"   {w['call']}: {w['no_slot']}")
        for change in _json_list(r.get("changes"))[:3]:
            out.append(f"   {w['changed']}: {change.get('sentence', '')}")
        for reason in _json_list(r.get("reasons"))[:reasons]:
            out.append(f"   {w['why']}: [{language.label(reason['model'], lang)} "
                       f"{reason.get('sign', '+' if reason['contribution'] > 0 else '-')}] "
                       f"{reason['sentence']}")
    return out


def _json_list(v) -> list[dict]:
    if isinstance(v, list):
        return v
    if isinstance(v, str) and v:
        return json.loads(v)
    return []
