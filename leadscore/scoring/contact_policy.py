"""Contact timing: which allowed slot and channel in the next 72 hours gets an answer.

For a lead at time t, every hourly slot of the next 72 hours (in the dealer's local time) is
crossed with every channel the dealer's rules allow at that hour (business hours, quiet hours
with no phone calls, per-channel hours). The slot model scores each (slot, channel) from the
lead's features plus the slot's hour, weekday, channel and the lead's activity share in that part
of the day; the best few are returned. The urgency model decides how soon: a lead likely to act
now is offered the best slot within the next few hours.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from leadscore.artifact import LeadModel
from leadscore.features.catalog import SLOT_CATALOG
from leadscore.features.slots import slot_values
from leadscore.lang import CHANNEL_WORDS, EN, ZH
from leadscore.schema import CHANNELS, DEFAULT_TZ, MESSAGE_CHANNELS

log = logging.getLogger(__name__)

SLOT_FEATURES = tuple(f.name for f in SLOT_CATALOG)

HORIZON_HOURS = 72
NOW_WINDOW_HOURS = 6  # "now": the best slot within this many hours
RULES_ENV = "LEADSCORE_CONTACT_RULES"


class RulesError(ValueError):
    """A contact rules file that cannot be read or does not validate (names the file)."""


def rules_path_from_env() -> Path | None:
    """The rules file named by ``LEADSCORE_CONTACT_RULES``, if any.

    Only the edges (CLI commands, the service, benchmarks) call this: the scorer and training
    take their rules as an argument, so what a process scores with is decided in one place.
    """
    value = os.environ.get(RULES_ENV, "").strip()
    return Path(value) if value else None


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
    _grids: dict = PrivateAttr(default_factory=dict)  # slot grids laid out under these rules

    def for_dealer(self, dealer_id: str) -> ContactRules:
        return self.dealers.get(dealer_id, self.default)

    @classmethod
    def load(cls, path: Path | None = None) -> RulesFile:
        """The rules in the YAML file ``path``; the defaults when ``path`` is None.

        Never reads the environment (see :func:`rules_path_from_env`)."""
        if path is None:
            return cls()
        try:
            return cls.model_validate(yaml.safe_load(Path(path).read_text()) or {})
        except (OSError, yaml.YAMLError, ValidationError) as e:
            raise RulesError(f"{path}: contact rules: {e}") from e


@functools.lru_cache(maxsize=1024)
def _known_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        log.warning("time zone %r unknown here: its leads get %s's slots and local times",
                    name, DEFAULT_TZ)
        return DEFAULT_TZ
    return name


def lead_zone(tz) -> str:
    """The zone a lead's slots are laid out and written in: its ``tz``, or
    :data:`~leadscore.schema.DEFAULT_TZ` when missing or unknown to Python (the contract
    checks zones against DuckDB's names, which are not quite Python's)."""
    if tz is None or tz is pd.NA or tz != tz or not str(tz).strip():
        return DEFAULT_TZ
    return _known_zone(str(tz))


def _zones(tz: Sequence) -> list[str]:
    """:func:`lead_zone` of every lead, worked out once per distinct value."""
    memo: dict = {}
    out = []
    for z in tz:
        try:
            out.append(memo[z])
        except (KeyError, TypeError):  # TypeError: an unhashable value
            v = lead_zone(z)
            with contextlib.suppress(TypeError):
                memo[z] = v
            out.append(v)
    return out


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


def _channel_sentence(feats: dict, best: str, p_by_channel: dict[str, float],
                      when: str | None = None, lang: str = EN) -> str:
    """Why this channel, in ``lang``: the lead's night activity and answer rates where they
    point to it, then each channel's chance of an answer, and when in the lead's local time
    (``when``, :attr:`_Grid.label`)."""
    zh = lang == ZH
    words = CHANNEL_WORDS[ZH if zh else EN]
    parts = []
    night = feats.get("night_share_30d")
    if night is not None and night == night and night >= 0.4:
        parts.append(f"{night:.0%} 的活动在 22:00 至 06:00 之间" if zh
                     else f"{night:.0%} of activity between 22:00 and 06:00")
    pr, mr = feats.get("phone_response_rate"), feats.get("message_response_rate")
    if pr == pr and mr == mr and pr is not None and mr is not None:
        if best in MESSAGE_CHANNELS and mr > pr:
            parts.append(f"消息回复率 {mr:.0%}，电话接听率 {pr:.0%}" if zh
                         else f"replies to {mr:.0%} of messages, answers {pr:.0%} of calls")
        elif best == "phone" and pr > mr:
            parts.append(f"电话接听率 {pr:.0%}，消息回复率 {mr:.0%}" if zh
                         else f"answers {pr:.0%} of calls, replies to {mr:.0%} of messages")
    ranked = sorted(p_by_channel.items(), key=lambda kv: -kv[1])
    if zh:
        others = "，".join(f"{words.get(c, c)} {p:.0%}" for c, p in ranked)
        at = f"在 {when} " if when else ""
        parts.append(f"{at}通过{words.get(best, best)}联系最可能得到回应（各渠道：{others}）")
        return "；".join(parts)
    others = ", ".join(f"{c} {p:.0%}" for c, p in ranked)
    at = f" at {when}" if when else ""
    parts.append(f"best chance of an answer by {best}{at} (by channel: {others})")
    text = "; ".join(parts)
    return text[:1].upper() + text[1:]  # not str.capitalize: it lowercases "Fri", "UTC"


@dataclass
class Recommendations:
    """The slot search's answer, one entry per lead (columnar: batch takes whole arrays)."""

    best_slot_start: np.ndarray  # datetime64[us], naive UTC; NaT when no slot is allowed
    best_slot_local: np.ndarray  # object: ISO text in the lead's zone with its offset, or None
    best_channel: np.ndarray  # object: channel name or None
    p_response: np.ndarray  # NaN when no slot is allowed
    margin: np.ndarray  # best channel's probability minus the next channel's best
    slots: list[list[dict]] | None  # the best ``top`` (start, channel, p_response) per lead
    reason: list[str | None] | None  # why this channel, in words

    def records(self) -> list[dict]:
        n = len(self.best_channel)
        return [{
            "best_slot_start": None if np.isnat(self.best_slot_start[i])
            else pd.Timestamp(self.best_slot_start[i]).tz_localize("UTC"),
            "best_slot_local": self.best_slot_local[i],
            "best_channel": self.best_channel[i],
            "p_response": None if np.isnan(self.p_response[i]) else float(self.p_response[i]),
            "margin": float(self.margin[i]),
            "slots": self.slots[i] if self.slots is not None else [],
            "reason": self.reason[i] if self.reason is not None else None,
        } for i in range(n)]


@dataclass
class _Grid:
    """A slot grid as arrays, ordered by (start, channel): the first best is the earliest."""

    start: np.ndarray  # int64 microseconds UTC
    hour: np.ndarray
    weekday: np.ndarray
    channel: np.ndarray  # object: channel names
    zone: str = "UTC"  # the zone of ``local`` and ``label``

    @classmethod
    def of(cls, g: pd.DataFrame, zone: str = "UTC") -> _Grid:
        start = pd.DatetimeIndex(g["slot_start"]).as_unit("us").asi8 if len(g) else np.array(
            [], dtype=np.int64)
        ch = g["channel"].to_numpy(dtype=object)
        rank = np.array([CHANNELS.index(c) for c in ch], dtype=np.int64)
        o = np.lexsort((rank, start))
        return cls(start[o], g["slot_hour"].to_numpy(dtype=float)[o],
                   g["slot_weekday"].to_numpy(dtype=float)[o], ch[o], zone)

    @property
    def size(self) -> int:
        return len(self.start)

    @cached_property
    def is_phone(self) -> np.ndarray:
        return self.channel == "phone"

    @cached_property
    def soon(self) -> np.ndarray:
        """The slots a "now" lead is offered: the next ``NOW_WINDOW_HOURS`` hours."""
        return self.start <= self.start.min() + NOW_WINDOW_HOURS * _US_PER_HOUR

    @cached_property
    def channels(self) -> list[str]:
        return [c for c in CHANNELS if (self.channel == c).any()]

    # what every request on this grid would otherwise recompute (a grid serves an hour)
    @cached_property
    def masks(self) -> dict[str, np.ndarray]:
        return {c: self.channel == c for c in self.channels}

    @cached_property
    def iso(self) -> list[str]:
        return [_iso(s) for s in self.start.tolist()]

    @cached_property
    def _local(self) -> pd.DatetimeIndex:
        return pd.DatetimeIndex(self.start.astype("datetime64[us]")).tz_localize(
            "UTC").tz_convert(self.zone)

    @cached_property
    def local(self) -> np.ndarray:
        """Each slot start in the grid's zone with that instant's offset (DST-correct), ISO
        8601 to the second: converted once per grid, picked per lead by index."""
        return np.array([t.isoformat(timespec="seconds") for t in self._local], dtype=object)

    @cached_property
    def label(self) -> list[str]:
        """Each slot start as an advisor reads it: local weekday, time and offset."""
        return [local_label(t) for t in self._local]

    def codes(self, ch_codes: dict) -> np.ndarray:
        """The slot model's codes of the grid's channels (NaN: a channel it never saw)."""
        key = tuple(ch_codes.items())
        cache = self.__dict__.setdefault("_codes", {})
        code = cache.get(key)
        if code is None:
            code = cache[key] = np.array([ch_codes.get(c, np.nan) for c in self.channel],
                                         dtype=float)
        return code

    def fill(self, model: LeadModel) -> _SlotFill | None:
        """How the slot columns of ``model``'s matrix are laid out on this grid (cached per
        model layout); None when :func:`slot_values` is not a per-slot pick of lead values."""
        cache = self.__dict__.setdefault("_fills", {})
        key = model.layout
        if key not in cache:
            cache[key] = _SlotFill.probe(self, model)
        return cache[key]


@dataclass(frozen=True)
class _SlotFill:
    """The slot columns of a grid's candidate rows, as a gather: per slot, each slot column
    holds either a constant of the grid (hour, weekday, channel) or one of the lead's own
    columns (the activity share of the slot's daypart, the lead's history on the slot's kind
    of channel). Found once per grid by running :func:`slot_values` on column numbers in
    place of lead values, so the one definition stays :func:`slot_values`; a request then
    takes its candidates' slot columns with one gather instead of re-deriving dayparts and
    channels (several times faster for a lead's candidates), and the model reads the lead's
    other columns from its one row (:meth:`LeadModel.predict_proba_runs`): the candidates
    are never laid out in full."""

    dst: np.ndarray  # (d,) the matrix columns written
    src: np.ndarray  # (G, d) the lead column each slot takes, -1 for a constant
    const: np.ndarray  # (G, d) the constants (NaN where a lead column is taken)

    @classmethod
    def probe(cls, g: _Grid, model: LeadModel) -> _SlotFill | None:
        col, n_cols, n = model.index, len(model.index), g.size
        shift = n_cols + 1

        def run(offset: int) -> dict[str, np.ndarray]:
            def lead(name: str) -> np.ndarray | None:
                return np.full(n, float(col[name] + offset)) if name in col else None

            return slot_values(g.hour, g.weekday, g.is_phone, lead)

        base, moved = run(0), run(shift)
        dst, src, const = [], [], []
        for name, a in base.items():
            if name not in col:
                continue
            b = moved[name]
            taken = ~((a == b) | (np.isnan(a) & np.isnan(b)))
            at = a[taken]
            if not (np.all(b[taken] - at == shift) and np.all(at == np.floor(at))
                    and np.all((at >= 0) & (at < n_cols))):
                return None  # arithmetic on lead values: not a pick
            dst.append(col[name])
            src.append(np.where(taken, a, -1).astype(np.intp))
            const.append(np.where(taken, np.nan, a))
        if "channel" in col:
            dst.append(col["channel"])
            src.append(np.full(n, -1, dtype=np.intp))
            const.append(g.codes(model.codes.get("channel", {})))
        if not dst:
            return cls(np.empty(0, np.intp), np.empty((n, 0), np.intp), np.empty((n, 0)))
        return cls(np.asarray(dst, dtype=np.intp), np.column_stack(src), np.column_stack(const))

    def values(self, X: np.ndarray) -> np.ndarray:
        """The slot columns (``dst``) of every lead row of ``X`` at every slot: (k, G, d)."""
        return np.where(self.src >= 0, X[:, np.maximum(self.src, 0)], self.const)


_US_PER_HOUR = 3_600_000_000
#: grids kept per process: (first hour, zone, dealer rules) -- a day of hours for many zones
_GRID_CACHE_SIZE = 4096


def _grid(rules: RulesFile, first_us: int, zone: str, rules_key: str) -> _Grid:
    """The slot grid starting at ``first_us`` (a full hour), cached: a request-time search
    would otherwise spend more time laying out dates than scoring."""
    cache = rules._grids
    key = (first_us, zone, rules_key)
    g = cache.get(key)
    if g is None:
        if len(cache) >= _GRID_CACHE_SIZE:
            cache.clear()
        g = cache[key] = _Grid.of(slot_grid(pd.Timestamp(first_us, unit="us", tz="UTC"), zone,
                                            rules.dealers.get(rules_key, rules.default)), zone)
    return g


def _utc_us(values: Sequence) -> np.ndarray:
    """Timestamps (pandas, datetime, numpy or ISO text; naive ones are UTC) as int64
    microseconds."""
    if isinstance(values, pd.Series) and isinstance(values.dtype, pd.DatetimeTZDtype):
        return pd.DatetimeIndex(values).as_unit("us").asi8
    if len(values) <= 64:  # a request's few: one by one beats format guessing
        out = []
        for v in values:
            t = pd.Timestamp(v)
            out.append((t.tz_localize("UTC") if t.tzinfo is None else t).value // 1000)
        return np.array(out, dtype=np.int64)
    ts = pd.to_datetime(pd.Series(list(values)), utc=True)
    return pd.DatetimeIndex(ts).as_unit("us").asi8


#: candidate rows per model call: bounds memory (leads x slots x slot columns, and the
#: leads x slots probabilities)
_CHUNK_ROWS = 400_000


def _slot_rows(model: LeadModel, g: _Grid, X: np.ndarray) -> np.ndarray:
    """Every lead row of ``X`` once per slot of ``g`` (lead-major), slot columns computed by
    :func:`slot_values` on the repeated rows: the general layout, which :class:`_SlotFill`
    reproduces by a gather whenever the slot features are picks of lead values."""
    col, k, n = model.index, len(X), g.size
    rep = np.repeat(X, n, axis=0)

    def lead(name: str) -> np.ndarray | None:
        return rep[:, col[name]] if name in col else None

    slot_cols = slot_values(np.tile(g.hour, k), np.tile(g.weekday, k), np.tile(g.is_phone, k),
                            lead)
    for name, v in slot_cols.items():
        if name in col:
            rep[:, col[name]] = v
    if "channel" in col:
        rep[:, col["channel"]] = np.tile(g.codes(model.codes.get("channel", {})), k)
    return rep


def recommend_matrix(
    model: LeadModel,
    X: np.ndarray,
    as_of: Sequence,
    tz: Sequence,
    dealer: Sequence,
    urgency: np.ndarray | None,
    rules: RulesFile,
    top: int = 3,
    reasons: bool = True,
    num_threads: int = 1,
    not_before: pd.Timestamp | None = None,
    lang: str = EN,
) -> Recommendations:
    """The best allowed slot and channel in the next 72 hours for each lead.

    ``X`` is the slot model's matrix of the leads (:meth:`LeadModel.matrix`, slot columns
    absent); every allowed (slot, channel) of a lead's grid becomes a copy of its row with the
    slot columns laid out by :func:`slot_values`, and all copies go to the model in few calls.
    Leads whose cutoffs share the next full hour, zone and rules share one grid. ``urgency``
    "now" narrows the search to the next ``NOW_WINDOW_HOURS`` hours. ``top`` and ``reasons`` =
    0/False skip the top-slot lists and the sentences (the nightly job's case).
    ``not_before`` (the request's time, for rows from an older feature snapshot) keeps every
    recommended slot in the future. ``lang``: the language of the sentences.
    """
    n = len(X)
    col = model.index
    best_start = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)
    best_channel = np.full(n, None, dtype=object)
    best_local = np.full(n, None, dtype=object)
    p_best = np.full(n, np.nan)
    margin = np.zeros(n)
    slots: list[list[dict]] | None = [[] for _ in range(n)] if top > 0 else None
    sentences: list[str | None] | None = [None] * n if reasons else None
    # a grid starts at the next full hour after the cutoff (or ``not_before``): that is all
    # it depends on, with the zone and the dealer's rules
    t_us = _utc_us(as_of)
    if not_before is not None:
        t_us = np.maximum(t_us, _utc_us([not_before])[0])
    first = -(-t_us // _US_PER_HOUR) * _US_PER_HOUR
    varying = np.zeros(len(col), dtype=bool)  # what differs between a lead's candidates
    varying[[col[f] for f in SLOT_FEATURES if f in col]] = True
    groups: dict[tuple, list[int]] = {}
    for i, key in enumerate(zip(first.tolist(),
                                _zones(tz),
                                (d if d in rules.dealers else "" for d in map(str, dealer)),
                                strict=True)):
        groups.setdefault(key, []).append(i)
    for (first_us, zone, rk), members in groups.items():
        idx = np.asarray(members)
        g = _grid(rules, first_us, zone, rk)
        G = g.size
        if not G:
            continue
        soon, chans = g.soon, g.channels
        fill = g.fill(model)
        step = max(1, _CHUNK_ROWS // G)
        for s0 in range(0, len(idx), step):
            rows = idx[s0:s0 + step]
            k = len(rows)
            if fill is not None:  # the lead rows and their slot columns per slot
                lead, vcols = X[rows], fill.dst
                vals = fill.values(lead)
            else:
                rep = _slot_rows(model, g, X[rows])
                lead, vcols = rep[::G], np.flatnonzero(varying)
                vals = rep[:, vcols].reshape(k, G, len(vcols))
            P = model.predict_proba_runs(lead, vals, vcols, num_threads=num_threads)
            Pm = P
            if urgency is not None:
                now = np.asarray(urgency)[rows] == "now"
                if now.any() and soon.any():
                    Pm = P.copy()
                    Pm[np.ix_(now, ~soon)] = -np.inf
            best = np.argmax(Pm, axis=1)
            p_best[rows] = P[np.arange(k), best]
            best_start[rows] = g.start[best]
            best_channel[rows] = g.channel[best]
            best_local[rows] = g.local[best]
            by_ch = {c: P[:, g.masks[c]].max(axis=1) for c in chans}
            other = np.full(k, -np.inf)
            for c in chans:
                other = np.where(best_channel[rows] == c, other, np.maximum(other, by_ch[c]))
            margin[rows] = np.where(np.isfinite(other), p_best[rows] - other, 0.0)
            if slots is not None:
                order = np.argsort(-Pm, axis=1, kind="stable")[:, :top]
                for r, i in enumerate(rows):
                    slots[i] = [{"start": g.iso[j], "start_local": g.local[j],
                                 "channel": g.channel[j],
                                 "p_response": round(float(P[r, j]), 4)} for j in order[r]]
            if sentences is not None:
                for r, i in enumerate(rows):
                    x = X[i]
                    sentences[i] = _channel_sentence(
                        {f: x[col[f]] for f in _SENTENCE_INPUTS if f in col},
                        best_channel[i], {c: float(by_ch[c][r]) for c in chans},
                        g.label[best[r]], lang)
    starts = np.where(best_start == np.iinfo(np.int64).min, np.datetime64("NaT", "us"),
                      best_start.astype("datetime64[us]"))
    return Recommendations(starts, best_local, best_channel, p_best, margin, slots, sentences)


_SENTENCE_INPUTS = ("night_share_30d", "phone_response_rate", "message_response_rate")


def _iso(us: int) -> str:
    """A slot start as the API writes UTC times (``iso_utc``): ISO 8601 with ``Z``."""
    return pd.Timestamp(int(us), unit="us", tz="UTC").isoformat().replace("+00:00", "Z")


def local_label(t: pd.Timestamp | str) -> str:
    """A zoned time (or ISO text with its offset) as an advisor reads it, in its own zone:
    ``Fri 11:00 (UTC+08:00)``."""
    t = pd.Timestamp(t)
    z = t.strftime("%z")  # Python 3.11's strftime has no ``%:z``
    return f"{t.strftime('%a %H:%M')} (UTC{z[:3]}:{z[3:]})"


def recommend(
    model: LeadModel,
    feats: pd.DataFrame,
    urgency: np.ndarray | None,
    rules: RulesFile,
    top: int = 3,
    num_threads: int = 1,
) -> list[dict]:
    """:func:`recommend_matrix` for a feature frame, one dict per row."""
    feats = feats.reset_index(drop=True)
    X = model.matrix(feats, absent=SLOT_FEATURES)
    tz = (feats["tz"].astype("object") if "tz" in feats
          else pd.Series([DEFAULT_TZ] * len(feats)))
    return recommend_matrix(model, X, feats["as_of"], tz, feats["dealer_id"].astype(str),
                            urgency, rules, top=top, num_threads=num_threads).records()
