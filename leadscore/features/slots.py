"""Slot features: the local hour, weekday and channel of a contact slot, and what the lead's own
history says about that part of the day and that kind of channel.

One definition for both sides: :func:`slot_values` is applied by training to the advisors' logged
attempts (through :func:`add_slot_features`, on frames) and by serving to every candidate slot of
the next 72 hours (on the model's float matrix, see ``scoring.contact_policy``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from leadscore.features import catalog
from leadscore.schema import CHANNELS, DEFAULT_TZ

#: where each daypart ends (they are contiguous and cover the day)
_PART_ENDS = np.array([b for _, b in catalog.DAYPARTS], dtype=float)
#: lead feature → its value per slot row (None when the lead features lack it)
LeadValues = Callable[[str], np.ndarray | None]


def slot_values(hour: np.ndarray, weekday: np.ndarray, is_phone: np.ndarray,
                lead: LeadValues) -> dict[str, np.ndarray]:
    """The numeric slot features for slot rows (local ``hour``, ``weekday``, whether the
    channel is a call) of leads whose features ``lead`` returns, aligned with the rows."""
    hour = np.asarray(hour, dtype=float)
    weekday = np.asarray(weekday, dtype=float)
    n = len(hour)
    out = {"slot_hour": hour, "slot_weekday": weekday,
           "slot_weekend": (weekday >= 5).astype(float)}
    shares = np.full(n, np.nan)
    parts = [lead(catalog.daypart_feature(a)) for a, _ in catalog.DAYPARTS]
    if n and any(v is not None for v in parts):  # the share of the daypart the hour is in
        h = np.where(np.isfinite(hour), hour, -1.0)
        part = np.searchsorted(_PART_ENDS, h, side="right")
        inside = (h >= catalog.DAYPARTS[0][0]) & (part < len(parts))
        table = np.column_stack([v if v is not None else shares for v in parts])
        shares = np.where(inside, table[np.arange(n), np.minimum(part, len(parts) - 1)], np.nan)
    out["slot_activity_share"] = shares
    # the lead's own history on this kind of channel (a call, or a message of any kind): the
    # plainest evidence of how it answers, lined up with the slot so that no tree has to learn
    # the channel x history interaction from few rows
    for stat, phone_col, msg_col in (("attempts", "phone_attempts", "message_attempts"),
                                     ("response_rate", "phone_response_rate",
                                      "message_response_rate")):
        p, m = lead(phone_col), lead(msg_col)
        out[f"slot_channel_{stat}"] = (np.where(is_phone, p, m) if p is not None
                                       and m is not None else np.full(n, np.nan))
    return out


def local_hour_weekday(slot_start: pd.Series, tz: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    ts = pd.Series(pd.to_datetime(np.asarray(slot_start), utc=True))
    zones = pd.Series(np.asarray(tz, dtype=object)).fillna(DEFAULT_TZ).astype(str)
    hours = np.empty(len(ts))
    wds = np.empty(len(ts))
    for zone in zones.unique():
        m = (zones == zone).to_numpy()
        loc = pd.DatetimeIndex(ts[m]).tz_convert(zone)
        hours[m] = loc.hour
        wds[m] = loc.weekday
    return hours, wds


def add_slot_features(frame: pd.DataFrame, slot_start: pd.Series, tz: pd.Series,
                      channel: pd.Series) -> pd.DataFrame:
    """``frame`` (lead feature rows, aligned with the slot series) plus the slot features."""
    out = frame.reset_index(drop=True).copy()
    hours, wds = local_hour_weekday(slot_start, tz)
    ch = np.asarray(channel, dtype=object)

    def lead(name: str) -> np.ndarray | None:
        return out[name].to_numpy(dtype=float) if name in out else None

    for name, v in slot_values(hours, wds, ch == "phone", lead).items():
        out[name] = v
    out["channel"] = pd.Categorical(ch, categories=list(CHANNELS))
    return out
