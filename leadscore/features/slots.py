"""Slot features: the local hour, weekday and channel of a contact slot, and how much of the
lead's activity falls in that part of the day.

One definition for both sides: training applies it to the advisors' logged attempts, serving to
every candidate slot of the next 72 hours.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from leadscore.features import catalog
from leadscore.schema import CHANNELS, DEFAULT_TZ


def add_slot_features(frame: pd.DataFrame, slot_start: pd.Series, tz: pd.Series,
                      channel: pd.Series) -> pd.DataFrame:
    """``frame`` (lead feature rows, aligned with the slot series) plus the slot features."""
    out = frame.reset_index(drop=True).copy()
    ts = pd.Series(pd.to_datetime(np.asarray(slot_start), utc=True))
    zones = pd.Series(np.asarray(tz, dtype=object)).fillna(DEFAULT_TZ).astype(str)
    hours = np.empty(len(out))
    wds = np.empty(len(out))
    for zone in zones.unique():
        m = (zones == zone).to_numpy()
        loc = pd.DatetimeIndex(ts[m]).tz_convert(zone)
        hours[m] = loc.hour
        wds[m] = loc.weekday
    out["slot_hour"] = hours
    out["slot_weekday"] = wds
    out["slot_weekend"] = (wds >= 5).astype(float)
    out["channel"] = pd.Categorical(np.asarray(channel, dtype=object), categories=list(CHANNELS))
    shares = np.full(len(out), np.nan)
    for a, b in catalog.DAYPARTS:
        name = catalog.daypart_feature(a)
        if name in out:
            m = (hours >= a) & (hours < b)
            shares[m] = out[name].to_numpy(dtype=float)[m]
    out["slot_activity_share"] = shares
    return out
