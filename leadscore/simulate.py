"""A deterministic simulator of a car-dealer group's leads, with an exact oracle.

The generative model (everything below is what the oracle in ``truth*.parquet`` knows)
=====================================================================================

Time runs on a grid of UTC days ``d = 0 .. days-1`` after ``start`` (midnight UTC). Everything
random is drawn from one ``numpy.random.Generator`` seeded with ``SimConfig.seed``, in a fixed
order, so the same config gives identical frames.

Dealers. ``D01..`` each have an IANA zone (most ``Asia/Shanghai``; also ``Asia/Urumqi`` and
``Europe/Berlin``), a contact diligence and a phone bias. Local hour and weekday always come from
converting the exact UTC instant to the dealer's zone (so Berlin's DST is honoured).

Leads. A lead is created on a uniform day of the first 2/3 of the run (``arrival_share``;
online leads at an hour of their habit, showroom/referral leads in opening hours), by a source
(website, autohome, dongchedi, douyin, showroom, referral). It draws latent traits:

* ``intent`` in (0, 1) ~ Beta, its mean depending on the source (referral/showroom best, douyin
  worst); a stated ``budget`` is likelier for high intent;
* ``horizon_days`` H: when the decision falls due (lognormal, shorter for high intent);
* ``browsiness`` (how much browsing a given engagement produces), a ``favourite`` model (the
  ``intended_model`` when stated; most browsing, finance and orders concern it);
* ``night_share``: the weight of the night-owl hour profile (22:00-06:00 local) in the lead's
  habits; ``quiet`` (rarely asks for a price or calls in; likelier for night owls);
  ``msg_affinity`` (message vs phone) and ``responsiveness``.

Engagement is a deterministic function of the age ``a`` (days since creation, evaluated at the
middle of each day) and the traits (``_hazards``)::

    g(a) = exp(-((a - H) / (0.35 H + 2))^2 / 2)  for a <= H,  exp(-(a - H) / (0.25 H + 4)) after
    e(a) = 0.9 exp(-a/6)                  # curiosity right after the enquiry, everyone
         + (0.08 + 0.2 intent) exp(-a/90) # slow baseline
         + 3 intent g(a)                  # rises as the decision nears, fades after it

While the lead is *alive* (not dark, no order, no lost) each day has independent Poisson counts
of page_view + config_view (1.5 browsiness e), finance_calc (e (0.01 + 0.3 intent g)), the
high-intent actions price_inquiry, test_drive_booked, store_visit, call_inbound (together
0.8 intent e (0.15 + g); quiet leads almost never ask a price or call) and a non-standard
``brochure_download``. Within the UTC day, an event's hour is drawn from the lead's local-hour
habit (a mixture of a day and a night profile, weight ``night_share``) or, for
store_visit/call_inbound/test_drive_done, from the store's opening hours. A booked test drive is
done 1-5 days later with probability 0.8 (decided at booking) if the lead is still alive at the
start of that day. Events drawn for the creation day before ``created_at`` move after it.

At the end of each alive day the lead leaves the alive state by competing hazards: ``order``
(0.125 intent^1.8 g, scaled by the width of the bump), ``lost`` (explicit: small, larger once H
has passed) or going *dark* (larger for low intent): after dark all activity stops, the lead
never answers a contact again; advisors do not know it and go on contacting it until they
record ``lost`` (hazard 0.02/day). An order is signed in the showroom with probability 0.7 (a
store_visit that day). Order and lost events are stamped after the lead's other activity of
that day. After an order: ``delivery`` 2-6 weeks later, ``service_visit`` ~90 days after
delivery; no other inbound activity.

Advisors (the logging policy). Contacts do NOT feed back into any hazard (order, inbound, dark,
lost): this keeps the truth tractable. The first contact comes from an inhomogeneous Poisson
process starting at creation with intensity mu*w(hour-of-week) (w: the dealer's business-hour
weights; mu a mixture of a fast and a slow advisor), so minutes to hours after creation, rarely
at odd hours. Follow-ups, from the day after the first contact while the lead is open (no
order/lost recorded; advisors do not see "dark"), are Poisson with a rate decaying with age times
w(hour-of-week); the channel is drawn given the local hour (mostly phone in business hours, more
wechat in the evening). The oracle knows the first contact's scheduled time.
``truth_contacts.propensity`` is the probability that the policy put this contact in this
(channel, local hour-of-week) slot: for follow-ups ``w(slot) / sum(w) * P(channel | hour)``; for
first contacts the probability that the first contact fell in this hour, given the creation
time, times ``P(channel | hour)``.

A contact is answered (phone: ``connected``, message: ``replied``) with probability
``true_response_prob`` (a logistic function of responsiveness, channel x message affinity,
quietness, the local hour against the lead's habit, weekend) while the lead is alive, and with
probability 0 once it went dark. A replied wechat contact yields a ``wechat_reply`` event minutes
later (same UTC day).

Truth. For each cutoff ``as_of`` (midnight UTC every ``truth_every_days``) and each lead open at
``as_of``, the oracle knows the traits, whether the lead is dark, the pending test-drive
appointments and a pending first contact, and computes on the day grid, exactly:

* ``p_order_30d = sum_j S_j q_order_j`` (S_j: probability to be alive at the start of day j);
* ``p_inquiry_72h = 1 - P(no high-intent event in 3 days)`` and ``p_churn = P(no inbound event
  in churn_horizon_days)``, by the recursion G_{j+1} = G_j * silent_j * (1 - q_exit_j), where
  ``silent_j = exp(-rate_j) * prod(1 - p_pending)`` (pending: a test drive due that day, the
  first contact's wechat reply); an exit is followed by no inbound event within the window, and
  an order exit is "loud" (a store visit that day) with probability 0.7. The inbound rate
  includes the expected wechat replies: follow-up rate x E[P(wechat) x p_response] over the
  day's policy hours.

A dark lead has p_order = p_inquiry = 0 and p_churn = 1. Probabilities for windows that run past
the end of the simulation are still exact under the model (``censored`` flags them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa

from leadscore.schema import (
    CHANNELS,
    DEFAULT_TZ,
    HIGH_INTENT_TYPES,
    INBOUND_TYPES,
    OUTCOMES,
    RESPONSE_OUTCOMES,
    STANDARD_EVENT_TYPES,
)

__all__ = ["SimConfig", "SimData", "simulate", "true_response_prob", "write"]

DAY_US = 86_400_000_000
HOUR_US = 3_600_000_000
MIN_US = 60_000_000
NEVER = 1 << 30  # a day index that never comes

# ---------------------------------------------------------------------------------------------
# Catalogue and constants
# ---------------------------------------------------------------------------------------------

#: (model, list price in CNY, popularity)
CAR_MODELS: tuple[tuple[str, float, float], ...] = (
    ("Aurora S", 118_000.0, 0.20),
    ("Aurora S Hybrid", 142_000.0, 0.12),
    ("Breeze EV", 169_000.0, 0.18),
    ("Cascade SUV", 215_000.0, 0.20),
    ("Cascade SUV Plus", 256_000.0, 0.10),
    ("Dune Pickup", 188_000.0, 0.06),
    ("Equinox MPV", 298_000.0, 0.08),
    ("Falcon GT", 389_000.0, 0.06),
)
MODEL_NAMES = np.array([m[0] for m in CAR_MODELS], dtype=object)
MODEL_PRICES = np.array([m[1] for m in CAR_MODELS])
MODEL_POP = np.array([m[2] for m in CAR_MODELS]) / sum(m[2] for m in CAR_MODELS)

SOURCES: tuple[str, ...] = ("website", "autohome", "dongchedi", "douyin", "showroom", "referral")
SOURCE_SHARE = np.array([0.24, 0.22, 0.17, 0.20, 0.10, 0.07])
#: mean intent by source (Beta with concentration SOURCE_KAPPA)
SOURCE_INTENT = np.array([0.30, 0.28, 0.27, 0.17, 0.45, 0.50])
SOURCE_KAPPA = 2.6
WALK_IN = np.array([False, False, False, False, True, True])

#: (zone, city) of dealers, cycled; most in the default zone.
DEALER_SITES: tuple[tuple[str, str], ...] = (
    ("Asia/Shanghai", "Shanghai"),
    ("Asia/Urumqi", "Urumqi"),
    ("Asia/Shanghai", "Hangzhou"),
    ("Asia/Shanghai", "Chengdu"),
    ("Europe/Berlin", "Berlin"),
    ("Asia/Shanghai", "Guangzhou"),
    ("Asia/Shanghai", "Wuhan"),
    ("Asia/Urumqi", "Kashgar"),
)
NEARBY_CITIES = {
    "Shanghai": ("Suzhou", "Kunshan"), "Urumqi": ("Changji",), "Hangzhou": ("Shaoxing", "Jiaxing"),
    "Chengdu": ("Deyang", "Meishan"), "Berlin": ("Potsdam",), "Guangzhou": ("Foshan", "Dongguan"),
    "Wuhan": ("Xiaogan",), "Kashgar": ("Artux",),
}


def _norm(x) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    return x / x.sum()


# Local-hour profiles (index = local hour 0..23).
DAY_PROFILE = _norm([0.08, 0.04, 0.03, 0.03, 0.03, 0.05, 0.2, 0.5, 0.8, 0.9, 1.0, 1.0,
                     1.3, 1.1, 0.9, 0.9, 0.9, 1.0, 1.2, 1.5, 1.7, 1.6, 0.8, 0.3])
NIGHT_PROFILE = _norm([2.2, 2.0, 1.6, 1.1, 0.7, 0.4, 0.15, 0.08, 0.08, 0.1, 0.12, 0.15,
                       0.25, 0.25, 0.2, 0.2, 0.2, 0.25, 0.3, 0.4, 0.5, 0.8, 1.6, 2.1])
STORE_PROFILE = _norm([0] * 9 + [0.6, 1.2, 1.1, 0.6, 0.8, 1.2, 1.3, 1.2, 1.0, 0.7, 0.4] + [0] * 4)

# Advisors' logging policy: weights over local hour and weekday (Mon=0).
POLICY_HOUR = np.array([0.01] * 8 + [0.25, 1.0, 1.2, 1.1, 0.5, 0.7, 1.1, 1.2, 1.1, 0.9, 0.6,
                                     0.4, 0.3, 0.15, 0.05, 0.02])
POLICY_WEEKDAY = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 0.8, 0.4])
_W = POLICY_WEEKDAY[:, None] * POLICY_HOUR[None, :]
POLICY_W = (_W / _W.mean()).ravel()  # by hour-of-week (weekday*24 + hour), mean 1

# Response model (logit units) -- availability by local hour for day people / night owls.
DAY_AVAIL = np.array([-2.5, -3, -3, -3, -3, -2.5, -1.5, -0.6, -0.1, 0.2, 0.3, 0.3,
                      0.0, 0.0, 0.2, 0.2, 0.2, 0.2, 0.3, 0.5, 0.5, 0.3, -0.5, -1.5])
NIGHT_AVAIL = np.array([0.4, 0.2, -0.3, -1.0, -1.8, -2.2, -2.5, -2.5, -2.0, -1.5, -1.0, -0.6,
                        -0.3, -0.3, -0.3, -0.3, -0.2, 0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.6])

_OUTCOME_CODES = ("connected", "replied", "no_answer", "ignored", "refused")
assert set(_OUTCOME_CODES) == set(OUTCOMES)

INBOUND_STREAMS: tuple[str, ...] = (
    "page_view", "config_view", "finance_calc", "price_inquiry", "test_drive_booked",
    "store_visit", "call_inbound", "brochure_download",
)
STORE_HOUR_TYPES = frozenset({"store_visit", "call_inbound", "test_drive_done"})
EXTRA_TYPE = "brochure_download"
#: every event type the simulator writes; internally an event type is an index into this
EVENT_TYPES: tuple[str, ...] = (*STANDARD_EVENT_TYPES, EXTRA_TYPE)
_T = {t: i for i, t in enumerate(EVENT_TYPES)}
_STREAM_CODE = np.array([_T[t] for t in INBOUND_STREAMS])
#: per event type: P(the event concerns the favourite model), P(no model recorded)
_P_FAV = np.ones(len(EVENT_TYPES))
_P_NULL = np.zeros(len(EVENT_TYPES))
for _t, _pf in {"page_view": 0.55, "config_view": 0.7, "finance_calc": 0.85, "price_inquiry": 0.9,
                "test_drive_booked": 0.85, "test_drive_done": 0.85, "store_visit": 0.75,
                "brochure_download": 0.6, "call_inbound": 0.5, "order": 0.93}.items():
    _P_FAV[_T[_t]] = _pf
for _t, _pn in {"page_view": 0.15, "store_visit": 0.15, "call_inbound": 0.4, "wechat_reply": 1.0,
                "lost": 1.0}.items():
    _P_NULL[_T[_t]] = _pn


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimConfig:
    """What to simulate; the same config always gives the same data."""

    n_leads: int = 5000
    days: int = 180
    n_dealers: int = 6
    seed: int = 0
    start: pd.Timestamp = pd.Timestamp("2026-01-05", tz="UTC")  # noqa: RUF009 (immutable)
    truth_every_days: int = 7  # cadence of truth cutoffs
    churn_horizon_days: int = 30
    #: leads are created over this share of the run; the rest lets the last ones' outcomes
    #: unfold (1.0: leads keep arriving to the end, as a live dealer's worklist has them)
    arrival_share: float = 2 / 3
    #: draw the dealers (share, contact diligence, phone bias) as the world of this seed
    #: does: other leads of the same dealer group (None: this world's own dealers)
    dealer_seed: int | None = None


@dataclass
class SimData:
    """The simulated files as frames; ``latent`` is written as ``truth_leads.parquet``."""

    leads: pd.DataFrame
    events: pd.DataFrame
    contacts: pd.DataFrame
    truth: pd.DataFrame
    truth_contacts: pd.DataFrame
    latent: pd.DataFrame
    config: SimConfig | None = None  # the config that made it (for the summary)


def true_response_prob(latent: pd.DataFrame, local_hour: np.ndarray, weekday: np.ndarray,
                       channel: np.ndarray) -> np.ndarray:
    """The exact probability that a contact is answered (connected / replied).

    ``latent`` holds the columns of ``truth_leads.parquet`` (responsiveness, msg_affinity, quiet,
    night_share); its rows align with the arrays (or it has one row, broadcast). ``local_hour``
    (0-23) and ``weekday`` (Monday=0) are in the dealer's local time; ``channel`` is phone, wechat
    or sms. This is the probability for a lead that has not gone dark (a dark lead answers never).
    """
    lat = SimpleNamespace(**{c: latent[c].to_numpy(dtype=float) for c in _RESP_TRAITS})
    ch = np.asarray(channel)
    code = np.full(ch.shape, -1)
    for i, c in enumerate(CHANNELS):
        code[ch == c] = i
    if (code < 0).any():
        raise ValueError(f"unknown channel(s): {sorted(set(ch[code < 0].tolist()))}")
    return _resp_prob(lat, np.asarray(local_hour, dtype=int), np.asarray(weekday, dtype=int), code)


def _resp_prob(lat, hour: np.ndarray, weekday: np.ndarray, ch: np.ndarray) -> np.ndarray:
    """Broadcasting core of :func:`true_response_prob` (``ch``: index into CHANNELS)."""
    night = lat.night_share
    avail = night * NIGHT_AVAIL[hour] + (1 - night) * DAY_AVAIL[hour]
    weekend = (weekday >= 5).astype(float)
    phone = (lat.responsiveness + 0.6 - 0.9 * lat.msg_affinity - 1.6 * lat.quiet
             - 1.2 * night + avail + 0.2 * weekend)
    wechat = lat.responsiveness - 0.4 + 0.8 * lat.msg_affinity + 0.4 * lat.quiet + 0.35 * avail
    sms = lat.responsiveness - 0.9 + 0.6 * lat.msg_affinity + 0.3 * lat.quiet + 0.25 * avail
    logit = np.where(ch == 0, phone, np.where(ch == 1, wechat, sms))
    return 1.0 / (1.0 + np.exp(-logit))


# ---------------------------------------------------------------------------------------------
# The latent dynamics (shared by the simulation and the oracle)
# ---------------------------------------------------------------------------------------------


def _hazards(lp, age: np.ndarray) -> dict[str, np.ndarray]:
    """Daily rates of every inbound stream and hazards of order/lost/dark, for an alive lead.

    ``lp`` holds trait arrays broadcastable against ``age`` (days since creation).
    """
    it, H, B = lp.intent, lp.horizon, lp.browsiness
    sig = 0.35 * H + 2.0
    tau = 0.25 * H + 4.0
    g = np.where(age <= H, np.exp(-0.5 * ((age - H) / sig) ** 2), np.exp(-(age - H) / tau))
    e = 0.9 * np.exp(-age / 6.0) + (0.08 + 0.2 * it) * np.exp(-age / 90.0) + 3.0 * it * g
    browse = 1.5 * B * e
    hi = 0.8 * it * e * (0.15 + g)
    quiet = lp.quiet
    r = {
        "page_view": 0.6 * browse,
        "config_view": 0.4 * browse,
        "brochure_download": 0.012 * browse,
        "finance_calc": e * (0.01 + 0.3 * it * g),
        "price_inquiry": 0.35 * hi * (1 - 0.9 * quiet),
        "test_drive_booked": 0.2 * hi,
        "store_visit": 0.25 * hi,
        "call_inbound": 0.2 * hi * (1 - 0.85 * quiet),
    }
    r["order"] = 0.125 * it ** 1.8 * g * 20.0 / (0.7 * H + 6.0)
    r["dark"] = 0.001 + 0.007 * (1 - it) ** 2 * (1 - g)
    r["lost"] = 0.0004 + 0.0015 / (1 + np.exp(-(age - H - 7.0) / 3.0))
    return r


#: probability that an order is signed in the showroom: a store_visit that day, before it
ORDER_VISIT_P = 0.7
LOST_FROM_DARK = 0.02  # daily hazard that advisors record a dark lead as lost


def _followup_rate(age: np.ndarray) -> np.ndarray:
    """Advisors' follow-ups per day (before the dealer's diligence and the day's hour weights)."""
    return 0.45 * np.exp(-age / 14.0) + 0.12


FIRST_CONTACT_MU = ((0.85, 1.5), (0.15, 0.06))  # (share, per-hour intensity at w == 1)


# ---------------------------------------------------------------------------------------------
# Simulation
# ---------------------------------------------------------------------------------------------


class _Clock:
    """Per dealer and UTC hour of the grid: local hour, weekday, hour-of-week."""

    def __init__(self, start: pd.Timestamp, n_days: int, zones: list[str]):
        self.start_us = int(start.value // 1000)
        hours = pd.date_range(start, periods=n_days * 24, freq="h", tz="UTC")
        k = len(zones)
        self.hour = np.zeros((k, n_days * 24), dtype=np.int64)
        self.weekday = np.zeros((k, n_days * 24), dtype=np.int64)
        for i, z in enumerate(zones):
            loc = hours.tz_convert(z)
            self.hour[i] = loc.hour
            self.weekday[i] = loc.dayofweek
        self.how = self.weekday * 24 + self.hour
        self.n_days = n_days

    def local(self, dealer: np.ndarray, ts_us: np.ndarray):
        h = (ts_us - self.start_us) // HOUR_US
        return self.hour[dealer, h], self.weekday[dealer, h], self.how[dealer, h]


class _HourSampler:
    """Draws an hour of a UTC day for (dealer, day, component) from local-hour weights."""

    def __init__(self, clock: _Clock, weights: list[np.ndarray]):
        # weights[c] indexed by local hour (24) or by hour-of-week (168)
        k, nh = clock.hour.shape
        nd = nh // 24
        tabs = []
        for w in weights:
            src = clock.how if len(w) == 168 else clock.hour
            tabs.append(w[src].reshape(k, nd, 24))
        tab = np.stack(tabs, axis=2)  # k, nd, c, 24
        tab = tab / tab.sum(axis=-1, keepdims=True)
        self.nc = len(weights)
        self.nd = nd
        cdf = np.cumsum(tab, axis=-1)
        cdf[..., -1] = 1.0
        self.cdf = (cdf + np.arange(k * nd * self.nc).reshape(k, nd, self.nc, 1)).ravel()

    def hours(self, rng, dealer, day, comp) -> np.ndarray:
        g = (dealer * self.nd + day) * self.nc + comp
        u = rng.random(len(g))
        pos = np.searchsorted(self.cdf, g + u, side="right")
        return np.minimum(pos - g * 24, 23)


def _dealers(cfg: SimConfig, rng) -> pd.DataFrame:
    k = cfg.n_dealers
    sites = [DEALER_SITES[i % len(DEALER_SITES)] for i in range(k)]
    return pd.DataFrame({
        "dealer_id": [f"D{i + 1:02d}" for i in range(k)],
        "tz": [s[0] for s in sites],
        "city": [s[1] for s in sites],
        "share": _norm(np.linspace(1.6, 0.7, k) * rng.uniform(0.8, 1.2, k)),
        "diligence": rng.uniform(0.7, 1.3, k),
        "phone_bias": rng.uniform(0.62, 0.82, k),
    })


def _channel_given_hour(phone_bias: np.ndarray) -> np.ndarray:
    """P(channel | local hour) per dealer: shape (k, 24, 3)."""
    k = len(phone_bias)
    out = np.zeros((k, 24, 3))
    for h in range(24):
        if 9 <= h <= 18:
            ph = phone_bias
        elif 19 <= h <= 21:
            ph = phone_bias - 0.3
        else:
            ph = np.full(k, 0.3)
        out[:, h, 0] = ph
        out[:, h, 1] = (1 - ph) * 0.78
        out[:, h, 2] = (1 - ph) * 0.22
    return out


def _traits(cfg: SimConfig, rng, dealers: pd.DataFrame) -> SimpleNamespace:
    n = cfg.n_leads
    lp = SimpleNamespace()
    lp.dealer = rng.choice(len(dealers), size=n, p=dealers["share"].to_numpy())
    lp.source = rng.choice(len(SOURCES), size=n, p=_norm(SOURCE_SHARE))
    m = SOURCE_INTENT[lp.source]
    lp.intent = np.clip(rng.beta(m * SOURCE_KAPPA, (1 - m) * SOURCE_KAPPA), 1e-4, 1 - 1e-4)
    lp.horizon = np.clip(np.exp(rng.normal(np.log(28.0 * (1.25 - 0.6 * lp.intent)), 0.55)),
                         3.0, 150.0)
    lp.browsiness = rng.gamma(2.5, 1 / 2.5, n)
    owl = rng.random(n) < 0.27
    lp.night_share = np.where(owl, rng.beta(7.0, 2.0, n), rng.beta(1.0, 12.0, n))
    lp.quiet = (rng.random(n) < 0.12 + 0.6 * lp.night_share).astype(float)
    lp.msg_affinity = rng.normal(0.0, 0.6, n) + 1.2 * lp.night_share + 0.4 * lp.quiet
    lp.responsiveness = rng.normal(-0.3, 0.7, n) + 0.8 * lp.intent
    lp.fav = rng.choice(len(CAR_MODELS), size=n, p=MODEL_POP)
    return lp


def simulate(cfg: SimConfig) -> SimData:
    """Run the generative process; pure and deterministic in ``cfg``."""
    rng = np.random.default_rng(cfg.seed)
    n, D = cfg.n_leads, cfg.days
    W = max(30, cfg.churn_horizon_days, 3)
    dealers = _dealers(cfg, rng)  # the world's first draws
    if cfg.dealer_seed is not None:  # the dealers of that seed's world, the rest this one's
        dealers = _dealers(cfg, np.random.default_rng(cfg.dealer_seed))
    zones = dealers["tz"].tolist()
    clock = _Clock(cfg.start, D + W + 2, zones)
    ch_given_hour = _channel_given_hour(dealers["phone_bias"].to_numpy())
    diligence = dealers["diligence"].to_numpy()
    # components: 0 day habit, 1 night habit, 2 store hours, 3 advisors' policy
    sampler = _HourSampler(clock, [DAY_PROFILE, NIGHT_PROFILE, STORE_PROFILE, POLICY_W])
    lp = _traits(cfg, rng, dealers)
    start_us = clock.start_us
    end_us = start_us + D * DAY_US

    # --- creation ----------------------------------------------------------------------------
    n_create_days = max(1, min(D, round(D * cfg.arrival_share)))
    d0 = rng.integers(0, n_create_days, n)
    owl_draw = rng.random(n) < lp.night_share
    comp = np.where(WALK_IN[lp.source], 2, owl_draw.astype(int))
    h0 = sampler.hours(rng, lp.dealer, d0, comp)
    created = start_us + d0 * DAY_US + h0 * HOUR_US + (rng.random(n) * HOUR_US).astype(np.int64)
    order = np.argsort(created, kind="stable")  # lead ids follow creation time
    for name, v in vars(lp).items():
        setattr(lp, name, v[order])
    d0, created, comp = d0[order], created[order], comp[order]
    rem_frac = (start_us + (d0 + 1) * DAY_US - created) / DAY_US
    fc = _first_contact(rng, clock, lp, created)
    fc_day = fc["day"]

    # --- day loop ----------------------------------------------------------------------------
    status = np.zeros(n, dtype=np.int8)  # 0 alive, 1 dark, 2 ordered, 3 lost
    exit_day = np.full(n, NEVER)  # end of which day the lead left "alive"
    order_day = np.full(n, NEVER)
    lost_day = np.full(n, NEVER)
    ev_lead, ev_day, ev_kind = [], [], []
    fu_lead, fu_day, fu_alive = [], [], []
    for d in range(D):
        alive = np.flatnonzero((d0 <= d) & (status == 0))
        first = d0[alive] == d
        age = np.where(first, rem_frac[alive] / 2, d - d0[alive] + 0.5)
        frac = np.where(first, rem_frac[alive], 1.0)
        sub = SimpleNamespace(**{k: getattr(lp, k)[alive] for k in
                                 ("intent", "horizon", "browsiness", "quiet")})
        hz = _hazards(sub, age)
        rates = np.stack([hz[s] * frac for s in INBOUND_STREAMS], axis=1)
        cnt = rng.poisson(rates)
        rows, cols = np.nonzero(cnt)
        reps = cnt[rows, cols]
        ev_lead.append(np.repeat(alive[rows], reps))
        ev_kind.append(np.repeat(cols, reps))
        ev_day.append(np.full(int(reps.sum()), d))
        # advisors' follow-ups for open leads (alive or dark), from the day after the first
        opened = np.flatnonzero((fc_day < d) & (status <= 1))
        lam = (_followup_rate(d - d0[opened] + 0.5) * diligence[lp.dealer[opened]]
               * _day_policy_weight(clock, lp.dealer[opened], d))
        c = rng.poisson(lam)
        has = c > 0
        fu_lead.append(np.repeat(opened[has], c[has]))
        fu_day.append(np.full(int(c.sum()), d))
        fu_alive.append(np.repeat(status[opened[has]] == 0, c[has]))
        # transitions at the end of the day
        ho, hl, hk = hz["order"] * frac, hz["lost"] * frac, hz["dark"] * frac
        tot = ho + hl + hk
        leave = rng.random(len(alive)) < -np.expm1(-tot)
        u = rng.random(len(alive)) * tot
        kind = np.where(u < ho, 2, np.where(u < ho + hl, 3, 1))
        who, kind = alive[leave], kind[leave]
        status[who] = kind
        exit_day[who] = d
        order_day[who[kind == 2]] = d
        lost_day[who[kind == 3]] = d
        dark = np.flatnonzero((status == 1) & (exit_day < d))
        closed = dark[rng.random(len(dark)) < -math.expm1(-LOST_FROM_DARK)]
        status[closed] = 3
        lost_day[closed] = d

    ev_lead = np.concatenate(ev_lead)
    ev_day = np.concatenate(ev_day)
    ev_kind = np.concatenate(ev_kind)
    fu_lead = np.concatenate(fu_lead)
    fu_day = np.concatenate(fu_day)
    fu_alive = np.concatenate(fu_alive)

    # --- test drives done ----------------------------------------------------------------------
    booked = ev_kind == INBOUND_STREAMS.index("test_drive_booked")
    b_lead, b_day = ev_lead[booked], ev_day[booked]
    td_day = b_day + rng.integers(1, 6, len(b_lead))
    td_show = rng.random(len(b_lead)) < 0.8
    done = td_show & (td_day <= exit_day[b_lead]) & (td_day < D)
    pending_td = (b_lead[td_show], b_day[td_show], td_day[td_show])

    # --- timestamps of inbound events ----------------------------------------------------------
    all_lead = np.concatenate([ev_lead, b_lead[done]])
    all_day = np.concatenate([ev_day, td_day[done]])
    all_kind = np.concatenate([_STREAM_CODE[ev_kind], np.full(int(done.sum()),
                                                              _T["test_drive_done"])])
    store_kind = np.array([t in STORE_HOUR_TYPES for t in EVENT_TYPES])
    owl = rng.random(len(all_lead)) < lp.night_share[all_lead]
    comp = np.where(store_kind[all_kind], 2, owl.astype(int))
    hrs = sampler.hours(rng, lp.dealer[all_lead], all_day, comp)
    ts = (start_us + all_day * DAY_US + hrs * HOUR_US
          + (rng.random(len(all_lead)) * HOUR_US).astype(np.int64))
    ts = _after_creation(rng, ts, created[all_lead], start_us)

    # --- contacts ---------------------------------------------------------------------------
    contacts = _contacts(rng, cfg, clock, sampler, lp, fc, exit_day, order_day, lost_day,
                         fu_lead, fu_day, fu_alive, ch_given_hour)

    # --- wechat replies ------------------------------------------------------------------------
    cl = contacts
    rep = (cl["channel"] == 1) & cl["responded"]
    r_ts = cl["ts"][rep] + (rng.exponential(15.0, int(rep.sum())) * MIN_US).astype(np.int64)
    r_day = cl["day"][rep]
    r_ts = np.minimum(r_ts, start_us + (r_day + 1) * DAY_US - 1_000_000)
    r_lead = cl["lead"][rep]

    # --- the showroom visit on most order days ---------------------------------------------------
    ov_lead = np.flatnonzero(order_day < NEVER)
    ov_lead = ov_lead[rng.random(len(ov_lead)) < ORDER_VISIT_P]
    ov_day = order_day[ov_lead]
    oh = sampler.hours(rng, lp.dealer[ov_lead], ov_day, np.full(len(ov_lead), 2))
    ov_ts = (start_us + ov_day * DAY_US + oh * HOUR_US
             + (rng.random(len(ov_lead)) * HOUR_US).astype(np.int64))
    ov_ts = _after_creation(rng, ov_ts, created[ov_lead], start_us)
    visit = np.full(len(ov_lead), _T["store_visit"])
    all_lead = np.concatenate([all_lead, ov_lead])
    all_day = np.concatenate([all_day, ov_day])
    all_kind = np.concatenate([all_kind, visit])
    ts = np.concatenate([ts, ov_ts])

    # --- closing events (after the lead's other activity that day) ---------------------------
    o_leads, l_leads = np.flatnonzero(order_day < NEVER), np.flatnonzero(lost_day < NEVER)
    close_lead = np.concatenate([o_leads, l_leads])
    close_type = np.concatenate([np.zeros(len(o_leads), int), np.ones(len(l_leads), int)])
    close_day = np.where(close_type == 0, order_day[close_lead], lost_day[close_lead])
    last = np.full(n, -1, dtype=np.int64)
    cday = np.full(n, -1)
    cday[close_lead] = close_day
    for le, da, t in ((all_lead, all_day, ts),
                      (cl["lead"], cl["day"], cl["ts"]), (r_lead, r_day, r_ts)):
        m = cday[le] == da
        np.maximum.at(last, le[m], t[m])
    bh = sampler.hours(rng, lp.dealer[close_lead], close_day, np.full(len(close_lead), 2))
    c_ts = (start_us + close_day * DAY_US + bh * HOUR_US
            + (rng.random(len(close_lead)) * HOUR_US).astype(np.int64))
    c_ts = _after_creation(rng, c_ts, created[close_lead], start_us)
    follow = last[close_lead] + 1 + (rng.exponential(15.0, len(close_lead)) * MIN_US).astype(
        np.int64)
    c_ts = np.minimum(np.maximum(c_ts, follow), start_us + (close_day + 1) * DAY_US - 1)

    # --- after the order: delivery and service ---------------------------------------------------
    o_mask = close_type == 0
    o_lead, o_day = close_lead[o_mask], close_day[o_mask]
    del_day = o_day + rng.integers(14, 43, len(o_lead))
    srv_day = del_day + np.round(rng.normal(90, 6, len(o_lead))).astype(int)
    dh = sampler.hours(rng, lp.dealer[o_lead], np.minimum(del_day, clock.n_days - 1),
                       np.full(len(o_lead), 2))
    sh = sampler.hours(rng, lp.dealer[o_lead], np.minimum(srv_day, clock.n_days - 1),
                       np.full(len(o_lead), 2))
    del_ts = (start_us + del_day * DAY_US + dh * HOUR_US
              + (rng.random(len(o_lead)) * HOUR_US).astype(np.int64))
    srv_ts = (start_us + srv_day * DAY_US + sh * HOUR_US
              + (rng.random(len(o_lead)) * HOUR_US).astype(np.int64))

    # --- the events frame ------------------------------------------------------------------------
    e_lead = np.concatenate([all_lead, r_lead, close_lead, o_lead, o_lead])
    e_ts = np.concatenate([ts, r_ts, c_ts, del_ts, srv_ts])
    e_type = np.concatenate([
        all_kind, np.full(len(r_lead), _T["wechat_reply"]),
        np.where(close_type == 0, _T["order"], _T["lost"]),
        np.full(len(o_lead), _T["delivery"]), np.full(len(o_lead), _T["service_visit"]),
    ])
    keep = e_ts < end_us
    e_lead, e_ts, e_type = e_lead[keep], e_ts[keep], e_type[keep]
    leads = _lead_frame(rng, lp, dealers, created)
    lead_ids = leads["lead_id"].to_numpy(dtype=object)
    events = _event_frame(rng, lp, lead_ids, e_lead, e_ts, e_type, end_us)
    contacts_df, truth_contacts = _contact_frames(cl, lead_ids, end_us)
    latent = _latent_frame(lp, dealers, lead_ids, leads, exit_day, status, order_day, lost_day,
                           start_us)
    truth = _truth(cfg, clock, lp, lead_ids, created, d0, exit_day, order_day, lost_day,
                   status, pending_td, cl, ch_given_hour, diligence)
    return SimData(leads=leads, events=events, contacts=contacts_df, truth=truth,
                   truth_contacts=truth_contacts, latent=latent, config=cfg)


def _day_policy_weight(clock: _Clock, dealer: np.ndarray, d: int) -> np.ndarray:
    """Mean policy weight w over the 24 UTC hours of day d (expected contacts per unit rate)."""
    w = POLICY_W[clock.how[:, d * 24:(d + 1) * 24]].mean(axis=1)
    return w[dealer]


def _after_creation(rng, ts, created, start_us) -> np.ndarray:
    """Move timestamps that fall before the lead's creation (creation day) after it."""
    bad = ts <= created
    if bad.any():
        end = start_us + ((created[bad] - start_us) // DAY_US + 1) * DAY_US
        span = end - created[bad]
        ts = ts.copy()
        ts[bad] = created[bad] + 1 + (rng.random(int(bad.sum())) * (span - 2)).astype(np.int64)
    return ts


def _first_contact(rng, clock, lp, created) -> dict[str, np.ndarray]:
    """When the advisor first contacts each lead: an inhomogeneous Poisson process from creation
    with intensity mu * w(hour-of-week), mu a mixture (fast / slow advisor). Also returns the
    probability that the first contact falls in the UTC hour it fell in (given creation)."""
    n = len(created)
    start_us = clock.start_us
    shares = np.array([s for s, _ in FIRST_CONTACT_MU])
    mus = np.array([m for _, m in FIRST_CONTACT_MU])
    mu = mus[rng.choice(len(shares), size=n, p=shares)]
    e = rng.exponential(1.0, n)
    c_h = (created - start_us) / HOUR_US  # hours since grid start
    fc_h = np.empty(n)
    cw = _cum_policy(clock)  # k, nh+1
    grid = np.arange(cw.shape[1], dtype=float)
    for k in range(cw.shape[0]):
        m = lp.dealer == k
        base = np.interp(c_h[m], grid, cw[k])
        fc_h[m] = np.interp(base + e[m] / mu[m], cw[k], grid, right=np.inf)
    fc_h = np.where(np.isfinite(fc_h), fc_h, grid[-1] + 24.0 * 365)  # beyond the clock
    fc_ts = np.maximum(start_us + (fc_h * HOUR_US).astype(np.int64), created + 1)
    fc_day = np.minimum((fc_ts - start_us) // DAY_US, NEVER)
    hidx = np.minimum((fc_ts - start_us) // HOUR_US, cw.shape[1] - 2)
    prop = np.zeros(n)
    for k in range(cw.shape[0]):
        m = lp.dealer == k
        c0 = np.interp(c_h[m], grid, cw[k])
        lo = np.maximum(cw[k][hidx[m]], c0)
        hi = cw[k][hidx[m] + 1]
        for s, mm in FIRST_CONTACT_MU:
            prop[m] += s * (np.exp(-mm * (lo - c0)) - np.exp(-mm * (hi - c0)))
    return {"ts": fc_ts, "day": fc_day, "prop": prop}


def _contacts(rng, cfg, clock, sampler, lp, fc, exit_day, order_day, lost_day,
              fu_lead, fu_day, fu_alive, ch_given_hour) -> dict[str, np.ndarray]:
    D = cfg.days
    start_us = clock.start_us
    fc_ts, fc_day, prop_t = fc["ts"], fc["day"], fc["prop"]
    fc_open = (fc_day < D) & (order_day >= fc_day) & (lost_day >= fc_day)
    fc_alive = exit_day >= fc_day
    f_lead = np.flatnonzero(fc_open)
    # follow-ups: hour within the UTC day from the policy weights
    fh = sampler.hours(rng, lp.dealer[fu_lead], fu_day, np.full(len(fu_lead), 3))
    fu_ts = (start_us + fu_day * DAY_US + fh * HOUR_US
             + (rng.random(len(fu_lead)) * HOUR_US).astype(np.int64))
    lead = np.concatenate([f_lead, fu_lead])
    ts = np.concatenate([fc_ts[f_lead], fu_ts])
    day = np.concatenate([fc_day[f_lead], fu_day])
    alive = np.concatenate([fc_alive[f_lead], fu_alive])
    is_first = np.concatenate([np.ones(len(f_lead), bool), np.zeros(len(fu_lead), bool)])
    dealer = lp.dealer[lead]
    hour, wday, how = clock.local(dealer, ts)
    pch = ch_given_hour[dealer, hour]  # m, 3
    u = rng.random(len(lead))
    channel = (u[:, None] > np.cumsum(pch, axis=1)).sum(axis=1).clip(0, 2)
    p_slot = np.where(is_first, np.concatenate([prop_t[f_lead], np.zeros(len(fu_lead))]),
                      POLICY_W[how] / POLICY_W.sum())
    propensity = p_slot * pch[np.arange(len(lead)), channel]
    p = _resp_prob(_lat(lp, lead), hour, wday, channel) * alive
    responded = rng.random(len(lead)) < p
    odd = (hour >= 22) | (hour < 8)
    p_refuse = np.where(channel == 0, np.where(odd, 0.45, 0.15), 0.04)
    refused = ~responded & (rng.random(len(lead)) < p_refuse)
    # codes into _OUTCOME_CODES: connected, replied, no_answer, ignored, refused
    outcome = np.where(responded, np.where(channel == 0, 0, 1),
                       np.where(refused, 4, np.where(channel == 0, 2, 3)))
    # pending first contacts for the oracle: (lead, ts, day, prob of a wechat reply)
    return {"lead": lead, "ts": ts, "day": day, "channel": channel, "outcome": outcome,
            "responded": responded, "p": p, "propensity": propensity,
            "fc_ts": fc_ts, "fc_day": fc_day,
            "fc_p_wechat": _fc_wechat_p(lp, clock, fc_ts, fc_day, ch_given_hour)}


def _fc_wechat_p(lp, clock, fc_ts, fc_day, ch_given_hour):
    """P(wechat reply) from the scheduled first contact of every lead, given it is alive.

    The channel is drawn only when the contact happens; the oracle integrates over it.
    """
    n = len(fc_ts)
    out = np.zeros(n)
    ok = fc_day < clock.n_days
    idx = np.flatnonzero(ok)
    hour, wday, _ = clock.local(lp.dealer[idx], fc_ts[idx])
    p = _resp_prob(_lat(lp, idx), hour, wday, np.ones(len(idx), dtype=int))
    out[idx] = ch_given_hour[lp.dealer[idx], hour, 1] * p
    return out


_RESP_TRAITS = ("responsiveness", "msg_affinity", "quiet", "night_share")


def _lat(lp, idx, column: bool = False) -> SimpleNamespace:
    """The traits the response model uses, for leads ``idx`` (as a column if ``column``)."""
    return SimpleNamespace(**{c: getattr(lp, c)[idx][:, None] if column else getattr(lp, c)[idx]
                              for c in _RESP_TRAITS})


def _cum_policy(clock: _Clock) -> np.ndarray:
    w = POLICY_W[clock.how]  # k, nh
    return np.concatenate([np.zeros((w.shape[0], 1)), np.cumsum(w, axis=1)], axis=1)


# ---------------------------------------------------------------------------------------------
# Frames
# ---------------------------------------------------------------------------------------------


def _ts(us: np.ndarray) -> pd.Series:
    return pd.Series(pd.to_datetime(np.asarray(us, dtype="datetime64[us]"), utc=True))


def _lead_frame(rng, lp, dealers, created) -> pd.DataFrame:
    n = len(created)
    lead_ids = np.array([f"L{i + 1:07d}" for i in range(n)], dtype=object)
    zones = dealers["tz"].to_numpy(dtype=object)[lp.dealer]
    tz = zones.copy()
    tz[(zones == DEFAULT_TZ) & (rng.random(n) < 0.10)] = None
    stated = rng.random(n)
    intended = np.where(stated < 0.70, MODEL_NAMES[lp.fav],
                        np.where(stated < 0.75, MODEL_NAMES[rng.integers(0, len(CAR_MODELS), n)],
                                 None))
    price = MODEL_PRICES[lp.fav]
    budget = np.round(price * np.exp(rng.normal(0.02, 0.15, n)), -3)
    budget[rng.random(n) < 0.55 - 0.4 * lp.intent] = np.nan
    home = dealers["city"].to_numpy(dtype=object)[lp.dealer]
    u = rng.random(n)
    near = np.array([NEARBY_CITIES[c][int(x * len(NEARBY_CITIES[c]))]
                     for c, x in zip(home, rng.random(n), strict=True)], dtype=object)
    city = np.where(u < 0.7, home, np.where(u < 0.85, near, None))
    return pd.DataFrame({
        "lead_id": pd.array(lead_ids, dtype="str"),
        "dealer_id": pd.array(dealers["dealer_id"].to_numpy(dtype=object)[lp.dealer], dtype="str"),
        "created_at": _ts(created),
        "source": pd.array(np.array(SOURCES, dtype=object)[lp.source], dtype="str"),
        "intended_model": pd.array(intended, dtype="str"),
        "city": pd.array(city, dtype="str"),
        "budget": budget.astype(float),
        "tz": pd.array(tz, dtype="str"),
    })


def _event_frame(rng, lp, lead_ids, e_lead, e_ts, e_type, end_us):
    m = len(e_lead)
    fav = lp.fav[e_lead]
    other = rng.integers(0, len(CAR_MODELS), m)
    model_idx = np.where(rng.random(m) < _P_FAV[e_type], fav, other)
    # delivery / service follow the ordered model
    is_order = e_type == _T["order"]
    o_model = np.full(len(lp.fav), -1)
    o_model[e_lead[is_order]] = model_idx[is_order]
    after = (e_type == _T["delivery"]) | (e_type == _T["service_visit"])
    model_idx = np.where(after, o_model[e_lead], model_idx)
    has_model = (rng.random(m) >= _P_NULL[e_type]) & (model_idx >= 0)
    price = MODEL_PRICES[np.maximum(model_idx, 0)]
    value = np.full(m, np.nan)
    fin = e_type == _T["finance_calc"]
    value[fin] = np.round(price[fin] * rng.uniform(0.3, 0.7, int(fin.sum())), -3)
    value[is_order] = np.round(price[is_order] * rng.uniform(0.9, 1.02, int(is_order.sum())), -2)
    # ingestion: seconds to minutes, ~5% in a late batch, ~2% unknown; never after the end
    lag = ((1.0 + rng.exponential(60.0, m)) * 1_000_000).astype(np.int64)
    late = rng.random(m) < 0.05
    lag[late] = (rng.uniform(2.0, 48.0, int(late.sum())) * HOUR_US).astype(np.int64)
    ing = np.minimum(e_ts + lag, end_us)
    ing_null = rng.random(m) < 0.02
    o = np.lexsort((e_type, e_lead, e_ts))
    ing_s = _ts(ing[o])
    ing_s[ing_null[o]] = pd.NaT
    return pd.DataFrame({
        "lead_id": _strs(lead_ids, e_lead[o]),
        "ts": _ts(e_ts[o]),
        "event_type": _strs(EVENT_TYPES, e_type[o]),
        "model": _strs(MODEL_NAMES, np.where(has_model, model_idx, -1)[o]),
        "value": value[o],
        "ingested_at": ing_s,
    })


def _strs(labels, codes: np.ndarray) -> pd.Series:
    """A ``str`` Series of ``labels[codes]`` (null where code < 0), built in Arrow."""
    codes = np.asarray(codes)
    lab = pa.array(list(labels), type=pa.string())
    idx = pa.array(np.maximum(codes, 0), mask=codes < 0)
    return pd.Series(lab.take(idx), dtype="str")


def _contact_frames(cl, lead_ids, end_us):
    o = np.lexsort((cl["lead"], cl["ts"]))
    o = o[cl["ts"][o] < end_us]
    lid = _strs(lead_ids, cl["lead"][o])
    ts = _ts(cl["ts"][o])
    ch = _strs(CHANNELS, cl["channel"][o])
    contacts = pd.DataFrame({"lead_id": lid, "ts": ts, "channel": ch,
                             "outcome": _strs(_OUTCOME_CODES, cl["outcome"][o])})
    truth = pd.DataFrame({"lead_id": lid.copy(), "ts": ts.copy(), "channel": ch.copy(),
                          "p_response": cl["p"][o], "propensity": cl["propensity"][o]})
    return contacts, truth


def _latent_frame(lp, dealers, lead_ids, leads, exit_day, status, order_day, lost_day,
                  start_us) -> pd.DataFrame:
    # a lead went dark iff it left "alive" on a day that is neither its order nor its lost day
    went_dark = (exit_day < NEVER) & (exit_day != order_day) & (lost_day != exit_day)
    dark_at = np.where(went_dark, start_us + (exit_day + 1) * DAY_US, 0)
    ds = _ts(dark_at)
    ds[~went_dark] = pd.NaT
    return pd.DataFrame({
        "lead_id": pd.array(lead_ids, dtype="str"),
        "dealer_id": leads["dealer_id"],
        "tz": pd.array(dealers["tz"].to_numpy(dtype=object)[lp.dealer], dtype="str"),
        "source": leads["source"],
        "intent": lp.intent,
        "horizon_days": lp.horizon,
        "browsiness": lp.browsiness,
        "night_share": lp.night_share,
        "quiet": lp.quiet,
        "msg_affinity": lp.msg_affinity,
        "responsiveness": lp.responsiveness,
        "favourite_model": pd.array(MODEL_NAMES[lp.fav], dtype="str"),
        "dark_at": ds,
        "ordered": order_day < NEVER,
        "lost": lost_day < NEVER,
    })


# ---------------------------------------------------------------------------------------------
# The oracle
# ---------------------------------------------------------------------------------------------


def _wechat_reply_factor(cfg, clock, lp, ch_given_hour, diligence) -> np.ndarray:
    """R[i, d]: expected wechat replies on UTC day d per unit follow-up rate, if alive.

    sum over the 24 UTC hours h of day d of w(how)/24 * P(wechat | hour) * p_response(hour).
    """
    n = len(lp.dealer)
    nd = clock.n_days
    R = np.zeros((n, nd))
    hw = np.arange(168)
    for k in range(clock.hour.shape[0]):
        idx = np.flatnonzero(lp.dealer == k)
        if not len(idx):
            continue
        p = _resp_prob(_lat(lp, idx, column=True), (hw % 24)[None, :], (hw // 24)[None, :],
                       np.ones((1, 168), int))
        M = np.zeros((168, nd))
        how = clock.how[k].reshape(nd, 24)
        wt = POLICY_W[how] / 24.0 * ch_given_hour[k, how % 24, 1] * diligence[k]
        np.add.at(M, (how.ravel(), np.repeat(np.arange(nd), 24)), wt.ravel())
        R[idx] = p @ M
    return R


def _truth(cfg, clock, lp, lead_ids, created, d0, exit_day, order_day, lost_day, status,
           pending_td, cl, ch_given_hour, diligence) -> pd.DataFrame:
    D = cfg.days
    W = max(30, cfg.churn_horizon_days, 3)
    Hc = cfg.churn_horizon_days
    start_us = clock.start_us
    R = _wechat_reply_factor(cfg, clock, lp, ch_given_hour, diligence)
    b_lead, b_day, td_day = pending_td
    fc_ts, fc_day, fc_pw = cl["fc_ts"], cl["fc_day"], cl["fc_p_wechat"]
    out = []
    k = 2
    while k * cfg.truth_every_days <= D:
        t0 = k * cfg.truth_every_days
        k += 1
        T = start_us + t0 * DAY_US
        opened = np.flatnonzero((created <= T) & (order_day >= t0) & (lost_day >= t0))
        if not len(opened):
            continue
        alive_m = exit_day[opened] >= t0
        idx = opened[alive_m]
        n_a = len(idx)
        days = t0 + np.arange(W)
        age = days[None, :] - d0[idx][:, None] + 0.5
        sub = SimpleNamespace(**{c: getattr(lp, c)[idx][:, None] for c in
                                 ("intent", "horizon", "browsiness", "quiet")})
        hz = _hazards(sub, age)
        tot = hz["order"] + hz["lost"] + hz["dark"]
        q_exit = -np.expm1(-tot)
        q_order = q_exit * hz["order"] / tot
        S = np.concatenate([np.ones((n_a, 1)), np.cumprod(1 - q_exit, axis=1)[:, :-1]], axis=1)
        p_order = (S[:, :30] * q_order[:, :30]).sum(axis=1)
        hi_rate = sum(hz[t] for t in HIGH_INTENT_TYPES)
        q_loud = q_order * ORDER_VISIT_P  # exits that come with a store visit that day
        p_inq = 1 - _p_silent(hi_rate[:, :3], q_exit[:, :3], q_loud[:, :3], np.ones((n_a, 3)))
        # inbound: own streams + wechat replies from follow-ups (+ pending items)
        own = sum(hz[t] for t in INBOUND_STREAMS if t in INBOUND_TYPES)
        fu = _followup_rate(age) * (days[None, :] > fc_day[idx][:, None])
        inbound = own + fu * R[idx][:, t0:t0 + W]
        mult = np.ones((n_a, W))
        pos = np.full(len(lead_ids), -1)
        pos[idx] = np.arange(n_a)
        # pending test drives: booked before the cutoff, due on/after it, show decided
        m = (pos[b_lead] >= 0) & (b_day < t0) & (td_day >= t0) & (td_day < t0 + W)
        np.multiply.at(mult, (pos[b_lead[m]], td_day[m] - t0), 0.0)
        # a pending first contact (scheduled after the cutoff)
        m = (fc_ts[idx] >= T) & (fc_day[idx] < t0 + W)
        rows = np.flatnonzero(m)
        np.multiply.at(mult, (rows, fc_day[idx][rows] - t0), 1 - fc_pw[idx][rows])
        p_churn = _p_silent(inbound[:, :Hc], q_exit[:, :Hc], q_loud[:, :Hc], mult[:, :Hc])
        n_o = len(opened)
        po = np.zeros(n_o)
        pi = np.zeros(n_o)
        pc = np.ones(n_o)
        po[alive_m], pi[alive_m], pc[alive_m] = p_order, p_inq, p_churn
        out.append(pd.DataFrame({
            "lead_idx": opened, "as_of_us": np.full(n_o, T), "p_order_30d": po,
            "p_inquiry_72h": pi, "p_churn": pc,
            "censored": np.full(n_o, t0 + 30 > D),
        }))
    if not out:
        return pd.DataFrame({"lead_id": pd.Series([], dtype="str"),
                             "as_of": pd.Series([], dtype="datetime64[us, UTC]"),
                             "p_order_30d": [], "p_inquiry_72h": [], "p_churn": [],
                             "censored": pd.Series([], dtype=bool)})
    t = pd.concat(out, ignore_index=True)
    return pd.DataFrame({
        "lead_id": _strs(lead_ids, t["lead_idx"].to_numpy()),
        "as_of": _ts(t["as_of_us"].to_numpy()),
        "p_order_30d": t["p_order_30d"].to_numpy(),
        "p_inquiry_72h": t["p_inquiry_72h"].to_numpy(),
        "p_churn": t["p_churn"].to_numpy(),
        "censored": t["censored"].to_numpy(dtype=bool),
    })


def _p_silent(rate: np.ndarray, q_exit: np.ndarray, q_loud: np.ndarray,
              mult: np.ndarray) -> np.ndarray:
    """P(no event in the window) for leads alive at its start.

    Day j is silent with probability ``exp(-rate_j) * mult_j`` given alive; at its end the lead
    exits with probability ``q_exit_j``, of which ``q_loud_j`` comes with an event that day; after
    an exit no event follows within the window.
    """
    silent = np.exp(-rate) * mult
    n, w = rate.shape
    G = np.ones(n)
    total = np.zeros(n)
    for j in range(w):
        total += G * silent[:, j] * (q_exit[:, j] - q_loud[:, j])
        G = G * silent[:, j] * (1 - q_exit[:, j])
    return np.clip(total + G, 0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Writing and summary
# ---------------------------------------------------------------------------------------------


def write(data: SimData, out_dir: Path) -> dict:
    """Write the frames as Parquet into ``out_dir`` (created) and return a JSON-able summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"leads": data.leads, "events": data.events, "contacts": data.contacts,
             "truth": data.truth, "truth_contacts": data.truth_contacts,
             "truth_leads": data.latent}
    for name, df in files.items():
        df.to_parquet(out / f"{name}.parquet", index=False)
    s = summary(data)
    s["out_dir"] = str(out)
    s["files"] = sorted(f"{k}.parquet" for k in files)
    return s


def summary(data: SimData) -> dict:
    """Counts and headline rates of a simulation (JSON-able)."""
    leads, ev, co = data.leads, data.events, data.contacts
    n = len(leads)
    ordered = leads["lead_id"].isin(ev.loc[ev["event_type"] == "order", "lead_id"])
    conv = ordered.groupby(leads["source"]).mean()
    resp = co["outcome"].isin(RESPONSE_OUTCOMES)
    tr = data.truth[~data.truth["censored"]]
    out = {
        "leads": n,
        "events": len(ev),
        "contacts": len(co),
        "truth_rows": len(data.truth),
        "truth_contact_rows": len(data.truth_contacts),
        "dealers": int(leads["dealer_id"].nunique()),
        "time_zones": sorted(data.latent["tz"].unique().tolist()),
        "order_rate": float(ordered.mean()) if n else 0.0,
        "lost_rate": lost_rate(data),
        "silent_30d_or_lost_rate": lost_rate(data, observed=True),
        "conversion_by_source": {str(k): float(v) for k, v in conv.items()},
        "events_by_type": {str(k): int(v) for k, v in ev["event_type"].value_counts().items()},
        "response_rate_by_channel": {str(k): float(v) for k, v in
                                     resp.groupby(co["channel"]).mean().items()},
        "truth_mean_uncensored": {c: float(tr[c].mean()) if len(tr) else None
                                  for c in ("p_order_30d", "p_inquiry_72h", "p_churn")},
    }
    if data.config is not None:
        cfg = data.config
        out["config"] = {f.name: str(getattr(cfg, f.name)) for f in fields(cfg)}
    return out


def lost_rate(data: SimData, observed: bool = False) -> float:
    """Share of leads lost: an explicit ``lost`` event, or dark for 30+ days before the end of
    the run without an order. "Dark" is the latent switch, or with ``observed`` no inbound event
    (or creation) in the last 30+ days."""
    ev, leads, lat = data.events, data.leads, data.latent
    if not len(leads):
        return 0.0
    if data.config is not None:
        end = data.config.start + pd.Timedelta(days=data.config.days)
    else:
        end = ev["ts"].max()
    cutoff = end - pd.Timedelta(days=30)
    lost = leads["lead_id"].isin(ev.loc[ev["event_type"] == "lost", "lead_id"])
    ordered = leads["lead_id"].isin(ev.loc[ev["event_type"] == "order", "lead_id"])
    if observed:
        inbound = ev[ev["event_type"].isin(INBOUND_TYPES)]
        last = inbound.groupby("lead_id")["ts"].max().reindex(leads["lead_id"])
        last = last.fillna(leads.set_index("lead_id")["created_at"])
        dark = pd.Series((last <= cutoff).to_numpy(), index=leads.index)
    else:
        dark_at = lat.set_index("lead_id")["dark_at"].reindex(leads["lead_id"])
        dark = pd.Series((dark_at.notna() & (dark_at <= cutoff)).to_numpy(), index=leads.index)
    return float((lost | (dark & ~ordered)).mean())
