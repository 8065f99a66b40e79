"""Contact timing: which allowed slot and channel in the next 72 hours gets an answer.

For a lead at time t, every hourly slot of the next 72 hours (in the dealer's local time) is
crossed with every channel the dealer's rules allow at that hour (business hours, quiet hours
with no phone calls, per-channel hours). The slot model scores each (slot, channel) from the
lead's features plus the slot's hour, weekday, channel and the lead's activity share in that part
of the day; the best few are returned. The urgency model decides how soon: a lead likely to act
now is offered the best slot within the next few hours.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field

from leadscore.artifact import LeadModel
from leadscore.features.slots import add_slot_features
from leadscore.schema import CHANNELS, MESSAGE_CHANNELS

HORIZON_HOURS = 72
NOW_WINDOW_HOURS = 6  # "now": the best slot within this many hours
RULES_ENV = "LEADSCORE_CONTACT_RULES"


class ChannelHours(BaseModel):
    """Local hours [start, end) in which a channel may be used; end may pass midnight."""

    model_config = ConfigDict(extra="forbid")
    start: int = Field(ge=0, le=23)
    end: int = Field(ge=1, le=24)
    weekends: bool = True

    def allows(self, hour: np.ndarray, weekday: np.ndarray) -> np.ndarray:
        inside = ((hour >= self.start) & (hour < self.end) if self.start < self.end
                  else (hour >= self.start) | (hour < self.end))
        return inside & (self.weekends | (weekday < 5))


class ContactRules(BaseModel):
    """A dealer's rules. Phone calls never fall in quiet hours, whatever ``channels`` says."""

    model_config = ConfigDict(extra="forbid")
    channels: dict[str, ChannelHours] = Field(default_factory=lambda: {
        "phone": ChannelHours(start=9, end=21),
        "wechat": ChannelHours(start=8, end=23),
        "sms": ChannelHours(start=9, end=21),
    })
    quiet_hours: tuple[int, int] = (21, 9)

    def quiet(self, hour: np.ndarray) -> np.ndarray:
        a, b = self.quiet_hours
        return (hour >= a) | (hour < b) if a > b else (hour >= a) & (hour < b)


class RulesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    default: ContactRules = Field(default_factory=ContactRules)
    dealers: dict[str, ContactRules] = Field(default_factory=dict)

    def for_dealer(self, dealer_id: str) -> ContactRules:
        return self.dealers.get(dealer_id, self.default)

    @classmethod
    def load(cls, path: Path | None = None) -> RulesFile:
        path = path or (Path(os.environ[RULES_ENV]) if os.environ.get(RULES_ENV) else None)
        if path is None:
            return cls()
        return cls.model_validate(yaml.safe_load(Path(path).read_text()) or {})


@dataclass
class Slot:
    start: pd.Timestamp
    channel: str
    p_response: float


def slot_grid(as_of: pd.Timestamp, tz: str, rules: ContactRules,
              hours: int = HORIZON_HOURS) -> pd.DataFrame:
    """Every allowed (slot start, channel) of the next ``hours`` hours, starting at the next
    full hour: columns slot_start (UTC), slot_hour, slot_weekday, slot_weekend, channel."""
    first = pd.Timestamp(as_of).tz_convert("UTC").ceil("h")
    starts = pd.date_range(first, periods=hours, freq="h", tz="UTC")
    local = starts.tz_convert(tz)
    hour = np.asarray(local.hour)
    wd = np.asarray(local.weekday)
    quiet = rules.quiet(hour)
    frames = []
    for ch in CHANNELS:
        ok = rules.channels[ch].allows(hour, wd) if ch in rules.channels else np.zeros_like(
            hour, dtype=bool)
        if ch == "phone":
            ok = ok & ~quiet
        if ok.any():
            frames.append(pd.DataFrame({
                "slot_start": starts[ok], "slot_hour": hour[ok].astype(float),
                "slot_weekday": wd[ok].astype(float),
                "slot_weekend": (wd[ok] >= 5).astype(float), "channel": ch,
            }))
    if not frames:
        return pd.DataFrame(columns=["slot_start", "slot_hour", "slot_weekday", "slot_weekend",
                                     "channel"])
    return pd.concat(frames, ignore_index=True)


def _channel_sentence(feats: pd.Series, best: str, p_by_channel: dict[str, float]) -> str:
    parts = []
    night = feats.get("night_share_30d")
    if night is not None and night == night and night >= 0.4:
        parts.append(f"{night:.0%} of activity between 22:00 and 06:00")
    pr, mr = feats.get("phone_response_rate"), feats.get("message_response_rate")
    if pr == pr and mr == mr and pr is not None and mr is not None:
        if best in MESSAGE_CHANNELS and mr > pr:
            parts.append(f"replies to {mr:.0%} of messages, answers {pr:.0%} of calls")
        elif best == "phone" and pr > mr:
            parts.append(f"answers {pr:.0%} of calls, replies to {mr:.0%} of messages")
    others = ", ".join(f"{c} {p:.0%}" for c, p in sorted(p_by_channel.items(),
                                                          key=lambda kv: -kv[1]))
    parts.append(f"best chance of an answer by {best} (by channel: {others})")
    return "; ".join(parts[:1] + parts[1:]).capitalize()


def recommend(
    model: LeadModel,
    feats: pd.DataFrame,
    urgency: np.ndarray | None,
    rules: RulesFile,
    top: int = 3,
    num_threads: int = 1,
) -> list[dict]:
    """Per feature row: best slot start, channel, response probability, top slots, reason.

    ``urgency`` (now / within_3_days / nurture per row, or None): "now" narrows the search to
    the next ``NOW_WINDOW_HOURS`` hours when any slot is allowed there. Leads sharing a cutoff,
    zone and dealer share one slot grid, and all candidate rows go to the model in one call.
    """
    feats = feats.reset_index(drop=True)
    n = len(feats)
    tz = (feats["tz"].astype("object").fillna("Asia/Shanghai").astype(str)
          if "tz" in feats else pd.Series(["Asia/Shanghai"] * n))
    keys = pd.DataFrame({"as_of": pd.to_datetime(feats["as_of"], utc=True), "tz": tz,
                         "dealer": feats["dealer_id"].astype(str)})
    grids: list[pd.DataFrame | None] = [None] * n
    parts = []
    groups = keys.groupby(["as_of", "tz", "dealer"], sort=False).groups
    for (as_of, zone, dealer), idx in groups.items():
        g = slot_grid(pd.Timestamp(as_of), zone, rules.for_dealer(dealer))
        idx = np.asarray(idx)
        for i in idx:
            grids[i] = g
        if len(g):
            rep = feats.loc[np.repeat(idx, len(g))].reset_index(drop=True)
            rep = rep.drop(columns=[c for c in ("channel",) if c in rep])
            tiled = g.iloc[np.tile(np.arange(len(g)), len(idx))].reset_index(drop=True)
            rows = add_slot_features(rep, tiled["slot_start"], pd.Series([zone] * len(rep)),
                                     tiled["channel"])
            rows["_row"] = np.repeat(idx, len(g))
            parts.append(rows)
    out: list[dict] = []
    if not parts:
        return [{"best_slot_start": None, "best_channel": None, "p_response": None,
                 "slots": [], "reason": None} for _ in range(n)]
    allrows = pd.concat(parts, ignore_index=True)
    p_all = model.predict_proba(allrows, num_threads=num_threads)
    order_rows = np.argsort(allrows["_row"].to_numpy(), kind="stable")
    row_of = allrows["_row"].to_numpy()[order_rows]
    bounds = np.searchsorted(row_of, np.arange(n + 1))
    for i in range(n):
        g = grids[i]
        if g is None or len(g) == 0:
            out.append({"best_slot_start": None, "best_channel": None, "p_response": None,
                        "slots": [], "reason": None})
            continue
        pi = p_all[order_rows[bounds[i]:bounds[i + 1]]]
        cand = np.arange(len(g))
        if urgency is not None and urgency[i] == "now":
            soon = (g["slot_start"] <= g["slot_start"].min()
                    + pd.Timedelta(hours=NOW_WINDOW_HOURS)).to_numpy()
            if soon.any():
                cand = cand[soon]
        order = cand[np.lexsort((g["slot_start"].to_numpy()[cand], -pi[cand]))]
        best = order[0]
        chans = g["channel"].to_numpy()
        by_channel = {ch: float(pi[chans == ch].max()) for ch in pd.unique(chans)}
        slots = [{"start": g["slot_start"].iloc[j].isoformat(), "channel": chans[j],
                  "p_response": round(float(pi[j]), 4)} for j in order[:top]]
        others = [v for ch, v in by_channel.items() if ch != chans[best]]
        out.append({
            "best_slot_start": g["slot_start"].iloc[best],
            "best_channel": chans[best],
            "p_response": float(pi[best]),
            "margin": float(pi[best] - max(others)) if others else 0.0,
            "slots": slots,
            "reason": _channel_sentence(feats.iloc[i], chans[best], by_channel),
        })
    return out


def slots_json(rec: dict) -> str:
    return json.dumps(rec.get("slots", []))
