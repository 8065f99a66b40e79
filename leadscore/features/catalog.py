"""The feature registry: every feature declared once, as data.

A feature says what it counts, over which window, and how to say it to an advisor. The feature
job (`features.job`) turns this catalogue into one SQL pass; training, HTTP serving and batch all
read the same catalogue, so there is no second copy of a feature anywhere.

Windows are half-open on the right and closed on the left: an event counts in the 7-day window
at ``as_of`` when ``as_of - 7d <= ts < as_of`` (and it was ingested by ``as_of``).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from leadscore.schema import (
    BROWSE_TYPES,
    HIGH_INTENT_TYPES,
    INBOUND_TYPES,
    STANDARD_EVENT_TYPES,
)

WINDOWS_DAYS: tuple[int, ...] = (1, 3, 7, 30, 90)
#: Local-time dayparts for the activity profile (when in the day this lead is online).
DAYPARTS: tuple[tuple[int, int], ...] = ((0, 4), (4, 8), (8, 12), (12, 16), (16, 20), (20, 24))
#: The feature job never looks further back than this many days for event aggregates.
LOOKBACK_DAYS = 90


@dataclass(frozen=True)
class Feature:
    """Base: a named numeric or categorical column and the sentence that explains it."""

    name: str
    says: str
    #: "float" features go to the model as float64; "category" as pandas category.
    dtype: str = "float"

    def sentence(self, value: object) -> str:
        """Render the advisor sentence; missing values read as 'none recorded'."""
        if value is None or (isinstance(value, float) and value != value):
            return self.says.split("{")[0].rstrip(" :") + ": none recorded"
        if isinstance(value, float):
            value += 0.0  # -0.0 reads as 0 (and caches keyed by value cannot tell them apart)
        return self.says.format(value=value)


@dataclass(frozen=True)
class Count(Feature):
    """Events of the given types in the window. ``events=None`` counts every type;
    ``other=True`` counts only types outside the contract's standard list."""

    events: tuple[str, ...] | None = None
    window_days: int = 7
    other: bool = False


@dataclass(frozen=True)
class DistinctModels(Feature):
    window_days: int = 30


@dataclass(frozen=True)
class TopModelShare(Feature):
    window_days: int = 30


@dataclass(frozen=True)
class DaysSince(Feature):
    """Days since the last visible event of these types (``None`` = any), within the lookback."""

    events: tuple[str, ...] | None = None


@dataclass(frozen=True)
class NightShare(Feature):
    """Share of events in the window whose dealer-local hour falls in [start, end) across
    midnight (22 -> 6 means 22:00-05:59)."""

    window_days: int = 14
    local_hours: tuple[int, int] = (22, 6)


@dataclass(frozen=True)
class Sessions(Feature):
    """Browsing sessions that start in the window: an event opens a session when no visible
    event precedes it within ``gap_minutes``."""

    window_days: int = 7
    gap_minutes: int = 30


@dataclass(frozen=True)
class Trend(Feature):
    """Rate over the short window divided by the rate over the long window (1 = steady)."""

    short_days: int = 7
    long_days: int = 30


@dataclass(frozen=True)
class ContactStat(Feature):
    """Contact history; ``stat`` is one of attempts, responses, response_rate, replies,
    phone_attempts, message_attempts, phone_response_rate, message_response_rate, days_since,
    unanswered_streak (attempts since the last answer), days_since_response,
    uncontacted_hours."""

    stat: str = "attempts"


@dataclass(frozen=True)
class History(Feature):
    """A statistic of the lead's events of ``events`` types (``None`` = every type) over its
    whole visible history, not capped by ``LOOKBACK_DAYS``: slow rhythms (service every 6-12
    months, a purchase every few months) only show over years.

    ``stat``: ``count``, ``value_sum``, ``value_mean`` (of the events' ``value``; missing while
    none has one) over the last ``window_days`` (``None`` = whole history); ``tenure`` and
    ``since_last`` (days since the first / last event); ``active_days`` (distinct UTC days of
    ``ts`` with an event); ``typical_gap`` = (last - first) / (active_days - 1), in days: the
    mean gap between active days, so a visit of twenty page views, or an order and its
    delivery on one day, is one return, not twenty; ``overdue`` = since_last / typical_gap;
    ``pace_trend`` = the pace over the last ``window_days`` against the long-run pace, count /
    max(tenure, window_days) (a lead younger than the window reads 1, not a spike).
    All are built from per (lead, type, day) count, value sum and count, first and last ts
    (``features.job``: one reduction, every engine)."""

    stat: str = "count"
    events: tuple[str, ...] | None = None
    window_days: int | None = None


HISTORY_STATS = ("count", "value_sum", "value_mean", "tenure", "since_last", "active_days",
                 "typical_gap", "overdue", "pace_trend")


@dataclass(frozen=True)
class SlotFeature(Feature):
    """A property of a candidate contact slot (hour, weekday, channel) rather than of the lead's
    history. Computed when slots are laid out (training: the logged attempt; serving: every
    allowed slot in the next 72 hours), never by the feature job."""


@dataclass(frozen=True)
class Static(Feature):
    """A lead attribute (``column`` of the leads table), ``lead_age_days``, or
    ``days_since_order`` (from the first visible order, however long ago; missing while the
    lead has not ordered). The last two are computed at the cutoff, not read from the table."""

    column: str = ""


@dataclass(frozen=True)
class LeadColumn(Feature):
    """An extra column of the leads table (a CRM field beyond the contract's), as a number
    (``dtype`` float: text that does not parse is missing) or as text categories. A static
    attribute read at every cutoff; a column the leads table lacks reads missing. Chosen at
    training (``training.vocabulary.choose_lead_columns``)."""

    column: str = ""


def _slug(types: Iterable[str]) -> str:
    return "_".join(types)


def _counts() -> list[Feature]:
    out: list[Feature] = []
    pretty = {
        "page_view": "Viewed pages",
        "config_view": "Opened the configurator",
        "finance_calc": "Used the finance calculator",
        "price_inquiry": "Asked for a price",
        "test_drive_booked": "Booked a test drive",
        "test_drive_done": "Took a test drive",
        "store_visit": "Visited the showroom",
        "call_inbound": "Called the dealer",
        "wechat_reply": "Replied on WeChat",
    }
    for etype, verb in pretty.items():
        for w in WINDOWS_DAYS:
            out.append(
                Count(
                    f"{etype}_{w}d",
                    says=f"{verb} {{value:.0f}} times in the last {w} days",
                    events=(etype,),
                    window_days=w,
                )
            )
    for w in WINDOWS_DAYS:
        out.append(
            Count(
                f"browse_{w}d",
                says=f"Browsed {{value:.0f}} pages and configurations in the last {w} days",
                events=BROWSE_TYPES,
                window_days=w,
            )
        )
        out.append(
            Count(
                f"high_intent_{w}d",
                says=(f"{{value:.0f}} price requests, test drives, visits or calls "
                      f"in the last {w} days"),
                events=HIGH_INTENT_TYPES,
                window_days=w,
            )
        )
        out.append(
            Count(
                f"events_{w}d",
                says=f"{{value:.0f}} interactions in the last {w} days",
                events=None,
                window_days=w,
            )
        )
    out.append(
        Count(
            "other_events_30d",
            says="{value:.0f} other interactions in the last 30 days",
            other=True,
            window_days=30,
        )
    )
    return out


def _recency() -> list[Feature]:
    out: list[Feature] = [
        DaysSince("days_since_any", says="Last active {value:.1f} days ago", events=None),
        DaysSince(
            "days_since_finance_calc",
            says="Used the finance calculator {value:.1f} days ago",
            events=("finance_calc",),
        ),
        DaysSince(
            "days_since_config_view",
            says="Opened the configurator {value:.1f} days ago",
            events=("config_view",),
        ),
    ]
    for etype in (*HIGH_INTENT_TYPES, "test_drive_done", "wechat_reply"):
        out.append(
            DaysSince(
                f"days_since_{etype}",
                says=f"Last {etype.replace('_', ' ')} {{value:.1f}} days ago",
                events=(etype,),
            )
        )
    return out


def _behaviour() -> list[Feature]:
    return [
        DistinctModels(
            "models_viewed_30d", says="Looked at {value:.0f} different models in 30 days",
            window_days=30,
        ),
        TopModelShare(
            "top_model_share_30d", says="{value:.0%} of model views on one model",
            window_days=30,
        ),
        NightShare(
            "night_share_14d", says="{value:.0%} of activity between 22:00 and 06:00",
            window_days=14,
        ),
        NightShare(
            "night_share_30d",
            says="{value:.0%} of activity between 22:00 and 06:00 (30 days)",
            window_days=30,
        ),
        Sessions("sessions_7d", says="{value:.0f} browsing sessions in the last 7 days",
                 window_days=7),
        Sessions("sessions_30d", says="{value:.0f} browsing sessions in the last 30 days",
                 window_days=30),
        Trend("trend_7_30", says="Activity this week is {value:.1f}x the monthly pace"),
        *[
            NightShare(
                f"activity_share_{a:02d}_{b:02d}",
                says=f"{{value:.0%}} of activity between {a:02d}:00 and {b:02d}:00 (30 days)",
                window_days=30, local_hours=(a, b % 24),
            )
            for a, b in DAYPARTS
        ],
    ]


def _contacts() -> list[Feature]:
    return [
        ContactStat("contact_attempts", says="Contacted {value:.0f} times so far",
                    stat="attempts"),
        ContactStat("contact_responses", says="Answered {value:.0f} contact attempts",
                    stat="responses"),
        ContactStat("contact_response_rate", says="Answered {value:.0%} of contact attempts",
                    stat="response_rate"),
        ContactStat("contact_replies", says="Replied to {value:.0f} messages",
                    stat="replies"),
        ContactStat("phone_attempts", says="Called {value:.0f} times so far",
                    stat="phone_attempts"),
        ContactStat("message_attempts", says="Sent {value:.0f} messages so far",
                    stat="message_attempts"),
        ContactStat("phone_response_rate", says="Answered {value:.0%} of calls",
                    stat="phone_response_rate"),
        ContactStat("message_response_rate", says="Replied to {value:.0%} of messages",
                    stat="message_response_rate"),
        ContactStat("days_since_contact", says="Last contacted {value:.1f} days ago",
                    stat="days_since"),
        # a lead that stopped answering is the clearest sign that it is going dark
        ContactStat("unanswered_streak",
                    says="{value:.0f} contact attempts in a row without an answer",
                    stat="unanswered_streak"),
        ContactStat("days_since_response", says="Last answered a contact {value:.1f} days ago",
                    stat="days_since_response"),
        ContactStat(
            "uncontacted_hours",
            says="Waited {value:.0f} hours for a first contact",
            stat="uncontacted_hours",
        ),
    ]


def _static() -> list[Feature]:
    return [
        Static("source", says="Came from {value}", dtype="category", column="source"),
        Static("intended_model", says="Interested in {value}", dtype="category",
               column="intended_model"),
        Static("budget", says="Budget {value:,.0f}", column="budget"),
        Static("lead_age_days", says="Lead is {value:.0f} days old", column="lead_age_days"),
        # an owner's engagement follows the car (delivery, then service months later), not the
        # purchase funnel: churn needs to tell owners apart and know how far along they are
        Static("days_since_order", says="Ordered {value:.0f} days ago",
               column="days_since_order"),
        # carried for local-time slot planning; not a model input (see LEAD_BEHAVIOUR)
        Static("tz", says="Dealer time zone {value}", dtype="category", column="tz"),
    ]


#: (name prefix, event types, what the advisor reads) of the whole-history groups
HISTORY_GROUPS: tuple[tuple[str, tuple[str, ...] | None, dict[str, str]], ...] = (
    ("events", None, {"count": "{value:.0f} interactions", "first": "First seen",
                      "last": "Last seen", "gap": "Usually returns every", "days": "Active"}),
    ("orders", ("order",), {"count": "Ordered {value:.0f} times", "last": "Last ordered",
                            "gap": "Usually orders every", "days": "Ordered",
                            "sum": "Orders worth {value:,.0f} in total",
                            "mean": "Average order value {value:,.0f}"}),
    ("service", ("service_visit",), {
        "count": "{value:.0f} service visits", "first": "First service visit",
        "last": "Last service visit", "gap": "Comes for service every",
        "days": "Came for service",
        "sum": "Spent {value:,.0f} on service in total"}),
    ("inbound", INBOUND_TYPES, {
        "count": "Got in touch {value:.0f} times", "first": "First got in touch",
        "last": "Last got in touch", "gap": "Usually gets in touch every",
        "days": "Got in touch"}),
    ("high_intent_hist", HIGH_INTENT_TYPES, {
        "count": "{value:.0f} price requests, test drives, visits or calls",
        "last": "Last price request, test drive, visit or call"}),
)


def _history() -> list[Feature]:
    """Whole-history features per group: counts over the whole history and 365/180 days, then
    whatever the group's sentences cover (tenure, recency, rhythm, value, pace)."""
    out: list[Feature] = []
    for slug, types, say in HISTORY_GROUPS:

        def add(name: str, says: str, stat: str, window: int | None = None,
                slug: str = slug, types: tuple[str, ...] | None = types) -> None:
            out.append(History(f"{slug}_{name}", says=says, stat=stat, events=types,
                               window_days=window))

        add("count_all", f"{say['count']} over the whole history", "count")
        for w in (365, 180):
            add(f"count_{w}d", f"{say['count']} in the last {w} days", "count", w)
        if "first" in say:
            add("tenure_days", f"{say['first']} {{value:.0f}} days ago", "tenure")
        add("days_since_last", f"{say['last']} {{value:.0f}} days ago", "since_last")
        if "gap" in say:
            add("active_days", f"{say['days']} on {{value:.0f}} different days", "active_days")
            add("typical_gap_days", f"{say['gap']} {{value:.0f}} days", "typical_gap")
            add("overdue", f"{say['last']} {{value:.1f}}x the usual gap ago (1 = on schedule)",
                "overdue")
        if "sum" in say:
            add("value_sum", say["sum"], "value_sum")
        if "mean" in say:
            add("value_mean", say["mean"], "value_mean")
    for slug, types, what in (("events", None, "Activity"),
                              ("inbound", INBOUND_TYPES, "Getting in touch")):
        out.append(History(f"{slug}_pace_trend", stat="pace_trend", events=types,
                           window_days=LOOKBACK_DAYS,
                           says=f"{what} in the last {LOOKBACK_DAYS} days is {{value:.1f}}x "
                                f"the long-run pace"))
    return out


def build_catalog() -> tuple[Feature, ...]:
    feats = [*_static(), *_counts(), *_recency(), *_behaviour(), *_contacts(), *_history()]
    names = [f.name for f in feats]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:  # a programming error, caught by the test suite on first import
        raise ValueError(f"duplicate feature names: {sorted(dupes)}")
    return tuple(feats)


#: The one registry. Built from plain dataclasses; importing it does no I/O.
CATALOG: tuple[Feature, ...] = build_catalog()

#: Slot features (the contact-slot model): laid out per candidate slot, not by the job.
SLOT_CATALOG: tuple[SlotFeature, ...] = (
    SlotFeature("slot_hour", says="Local hour {value:.0f}:00"),
    SlotFeature("slot_weekday", says="Weekday {value:.0f} (0 = Monday)"),
    SlotFeature("slot_weekend", says="Weekend slot" + "{value:.0f}"[:0]),
    SlotFeature("slot_activity_share",
                says="{value:.0%} of this lead's activity falls in this part of the day"),
    SlotFeature("channel", says="By {value}", dtype="category"),
    SlotFeature("slot_channel_attempts",
                says="Tried {value:.0f} times before on this kind of channel"),
    SlotFeature("slot_channel_response_rate",
                says="Answered {value:.0%} of earlier attempts on this kind of channel"),
)
BY_NAME: dict[str, Feature] = {f.name: f for f in (*CATALOG, *SLOT_CATALOG)}

#: Feature services: the feature lists models pick from.
STATIC = tuple(f.name for f in CATALOG if isinstance(f, Static))
CONTACT_HISTORY = tuple(f.name for f in CATALOG if isinstance(f, ContactStat))
LEAD_BEHAVIOUR = tuple(f.name for f in CATALOG if f.name != "tz"
                       and not isinstance(f, History))
#: Whole-history features (tenure, lifetime counts, rhythm, value): churn and conversion.
HISTORY = tuple(f.name for f in CATALOG if isinstance(f, History))
#: What the contact-slot model sees: when and how the lead is reachable, plus the slot.
SLOT_CONTEXT = (
    "source", "lead_age_days", "night_share_14d", "night_share_30d",
    *(f"activity_share_{a:02d}_{b:02d}" for a, b in DAYPARTS),
    "contact_attempts", "contact_responses", "contact_response_rate", "contact_replies",
    "phone_attempts", "message_attempts", "phone_response_rate", "message_response_rate",
    "days_since_contact", "unanswered_streak", "days_since_response", "uncontacted_hours",
    "days_since_any", "events_7d", "events_30d",
    "browse_7d", "high_intent_30d", "price_inquiry_90d", "call_inbound_90d", "sessions_7d",
    "slot_hour", "slot_weekday", "slot_weekend", "slot_activity_share", "channel",
    "slot_channel_attempts", "slot_channel_response_rate",
)


# --------------------------------------------------------------------------- vocabulary
#
# Event types beyond the contract's standard list get their own features when training finds
# them among the most frequent (``training.vocabulary``). Their names carry the type
# (percent-encoded: LightGBM refuses some characters in feature names), so a feature name
# alone says what to compute and how to say it: every engine and both serving paths resolve
# a model's feature list with :func:`feature`, whatever vocabulary it was trained with.

#: name prefix of the per-event-type features of the data-driven vocabulary
VOCAB_PREFIX = "type__"
#: (suffix, builder) of the features each vocabulary event type gets
_VOCAB_KINDS: tuple[str, ...] = ("7d", "30d", "90d", "count_all", "days_since_last")


def _type_slug(event_type: str) -> str:
    return urllib.parse.quote(event_type, safe="")


def _vocab_feature(event_type: str, kind: str) -> Feature:
    name = f"{VOCAB_PREFIX}{_type_slug(event_type)}__{kind}"
    shown = event_type.replace("{", "(").replace("}", ")")  # never a format field
    ev = (event_type,)
    if kind.endswith("d") and kind[:-1].isdigit():
        w = int(kind[:-1])
        return Count(name, says=f"Did {shown} {{value:.0f}} times in the last {w} days",
                     events=ev, window_days=w)
    if kind == "count_all":
        return History(name, says=f"Did {shown} {{value:.0f}} times over the whole history",
                       stat="count", events=ev)
    if kind == "days_since_last":
        return History(name, says=f"Last did {shown} {{value:.0f}} days ago",
                       stat="since_last", events=ev)
    raise KeyError(f"unknown vocabulary feature kind {kind!r}")


def vocabulary_features(event_types: Iterable[str]) -> list[Feature]:
    """The features of a vocabulary's event types (types of the standard list are refused:
    they have their own features already)."""
    out: list[Feature] = []
    for t in event_types:
        if t in STANDARD_EVENT_TYPES:
            raise ValueError(f"{t!r} is a standard event type, not a vocabulary one")
        out += [_vocab_feature(t, k) for k in _VOCAB_KINDS]
    return out


#: name prefix of the features of extra lead-table columns; the suffix says the type
COLUMN_PREFIX = "col__"
_COLUMN_KINDS = {"num": "float", "cat": "category"}


def lead_column_feature(column: str, dtype: str) -> LeadColumn:
    """The feature of the extra lead column ``column`` as ``dtype`` (float or category)."""
    kind = {v: k for k, v in _COLUMN_KINDS.items()}.get(dtype)
    if kind is None:
        raise ValueError(f"a lead column is float or category, not {dtype!r}")
    if not column:
        raise ValueError(f"{column!r} is not an extra lead column")
    shown = column.replace("{", "(").replace("}", ")")
    says = f"CRM field {shown}: {{value}}" if dtype == "category" else \
        f"CRM field {shown} {{value:g}}"
    return LeadColumn(f"{COLUMN_PREFIX}{_type_slug(column)}__{kind}", says=says, dtype=dtype,
                      column=column)


def lead_columns_of(names: Iterable[str]) -> dict[str, str]:
    """The extra lead columns a feature list uses, ``{column: dtype}`` in order of use."""
    out: dict[str, str] = {}
    for n in names:
        if n.startswith(COLUMN_PREFIX) and n not in BY_NAME:
            f = feature(n)
            out.setdefault(f.column, f.dtype)
    return out


def vocabulary_of(names: Iterable[str]) -> list[str]:
    """The vocabulary event types a feature list uses, in order of first use."""
    out: list[str] = []
    for n in names:
        if n.startswith(VOCAB_PREFIX) and n not in BY_NAME:
            t = feature(n).events[0]
            if t not in out:
                out.append(t)
    return out


def feature(name: str) -> Feature:
    """The feature called ``name``: a catalogue one, or a vocabulary one (built from its
    name)."""
    f = BY_NAME.get(name)
    if f is not None:
        return f
    if name.startswith(VOCAB_PREFIX) and "__" in name[len(VOCAB_PREFIX):]:
        slug, kind = name[len(VOCAB_PREFIX):].rsplit("__", 1)
        t = urllib.parse.unquote(slug)
        if kind in _VOCAB_KINDS and t and _type_slug(t) == slug \
                and t not in STANDARD_EVENT_TYPES:
            return _vocab_feature(t, kind)
    if name.startswith(COLUMN_PREFIX) and "__" in name[len(COLUMN_PREFIX):]:
        slug, kind = name[len(COLUMN_PREFIX):].rsplit("__", 1)
        col = urllib.parse.unquote(slug)
        if kind in _COLUMN_KINDS and col and _type_slug(col) == slug:
            return lead_column_feature(col, _COLUMN_KINDS[kind])
    raise KeyError(f"unknown feature: {name!r}; see leadscore.features.catalog")


def get(names: Sequence[str]) -> list[Feature]:
    unknown = []
    out = []
    for n in names:
        try:
            out.append(feature(n))
        except KeyError:
            unknown.append(n)
    if unknown:
        raise KeyError(f"unknown features: {unknown}; see leadscore.features.catalog")
    return out


def job_features(names: Iterable[str]) -> list[Feature]:
    """What the feature job computes for models using ``names``: the catalogue plus the
    vocabulary features among them (the catalogue's columns stay, for the store and the
    holdout files)."""
    extra = [n for n in dict.fromkeys(names) if n not in BY_NAME]
    return [*CATALOG, *get(extra)]


def daypart_feature(local_hour: int) -> str:
    """The activity-share feature whose daypart holds ``local_hour``."""
    for a, b in DAYPARTS:
        if a <= local_hour < b:
            return f"activity_share_{a:02d}_{b:02d}"
    raise ValueError(f"hour {local_hour} outside 0..23")


def categorical(names: Sequence[str]) -> list[str]:
    return [f.name for f in get(names) if f.dtype == "category"]


__all__ = [
    "BY_NAME",
    "CATALOG",
    "LOOKBACK_DAYS",
    "STANDARD_EVENT_TYPES",
    "ContactStat",
    "Count",
    "DaysSince",
    "DistinctModels",
    "Feature",
    "History",
    "LeadColumn",
    "NightShare",
    "Sessions",
    "Static",
    "TopModelShare",
    "Trend",
    "feature",
    "get",
    "job_features",
    "lead_column_feature",
    "lead_columns_of",
    "vocabulary_features",
    "vocabulary_of",
]
