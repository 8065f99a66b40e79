"""The feature registry: every feature declared once, as data.

A feature says what it counts, over which window, and how to say it to an advisor. The feature
job (`features.job`) turns this catalogue into one SQL pass; training, HTTP serving and batch all
read the same catalogue, so there is no second copy of a feature anywhere.

Windows are half-open on the right and closed on the left: an event counts in the 7-day window
at ``as_of`` when ``as_of - 7d <= ts < as_of`` (and it was ingested by ``as_of``).
"""

from __future__ import annotations

import functools
import re
import string
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


#: a plural choice in an English template, "{time|times}": the first when the value reads 1
_PLURAL = re.compile(r"\{([^{}|:]*)\|([^{}|:]*)\}")


@functools.lru_cache(maxsize=8192)
def forms(template: str) -> tuple[str, str, tuple[float, float] | str | None]:
    """A template's singular and plural format strings, and when the singular applies: an
    open interval of values (``.0f`` numbers read "1" exactly inside (0.5, 1.5)), a format
    spec to render and compare with "1", or None (the number never reads "1": ``.1f``,
    percentages, or no choice at all)."""
    one, other = _PLURAL.sub(r"\1", template), _PLURAL.sub(r"\2", template)
    if one == other:
        return one, other, None
    spec = next((s for _, f, s, _ in string.Formatter().parse(other) if f == "value"), None)
    if spec is None:
        raise ValueError(f"{template!r}: a plural choice needs a {{value}} to count")
    if re.fullmatch(r",?\.0f", spec):
        return one, other, (0.5, 1.5)
    if re.fullmatch(r",?\.[1-9]\d*f|.*%", spec):
        return other, other, None
    return one, other, spec


def _reads_one(value: object, when: tuple[float, float] | str) -> bool:
    if isinstance(when, tuple):
        return when[0] < value < when[1]  # type: ignore[operator]
    return format(value, when) == "1"


@dataclass(frozen=True)
class Feature:
    """Base: a named numeric or categorical column and the sentences that explain it.

    ``says`` (English) and ``says_zh`` (Simplified Chinese) are templates of the value;
    English ones pick singular or plural with ``{one|many}`` by how the value reads.
    ``missing``/``missing_zh`` are what a missing value says where missing means something
    (never contacted, no order); empty: a missing value is no reason and is not shown."""

    name: str
    says: str
    #: "float" features go to the model as float64; "category" as pandas category.
    dtype: str = "float"
    says_zh: str = ""
    missing: str = ""
    missing_zh: str = ""

    def template(self, lang: str = "en") -> str:
        """The sentence template in ``lang`` (English where a feature has no other)."""
        return self.says_zh if lang == "zh-CN" and self.says_zh else self.says

    def sentence(self, value: object, lang: str = "en") -> str | None:
        """The advisor sentence of ``value`` in ``lang``; None when the value is missing and
        missing says nothing about this feature (the reason is dropped)."""
        if value is None or (isinstance(value, float) and value != value):
            text = self.missing_zh if lang == "zh-CN" and self.missing_zh else self.missing
            return text or None
        if isinstance(value, float):
            value += 0.0  # -0.0 reads as 0 (and caches keyed by value cannot tell them apart)
        one, other, when = forms(self.template(lang))
        if when is not None and _reads_one(value, when):
            return one.format(value=value)
        return other.format(value=value)


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


#: (English verb, Chinese verb) of the per-type counts
_COUNTED: dict[str, tuple[str, str]] = {
    "page_view": ("Viewed pages", "浏览页面"),
    "config_view": ("Opened the configurator", "打开配置器"),
    "finance_calc": ("Used the finance calculator", "使用金融计算器"),
    "price_inquiry": ("Asked for a price", "询价"),
    "test_drive_booked": ("Booked a test drive", "预约试驾"),
    "test_drive_done": ("Took a test drive", "试驾"),
    "store_visit": ("Visited the showroom", "到店"),
    "call_inbound": ("Called the dealer", "致电经销商"),
    "wechat_reply": ("Replied on WeChat", "微信回复"),
}
_HIGH_INTENT_EN = ("{price request, test drive, visit or call|"
                   "price requests, test drives, visits or calls}")
_HIGH_INTENT_ZH = "询价、试驾、到店或来电"


def _counts() -> list[Feature]:
    # counts are 0 without events, never missing: a missing count says nothing
    out: list[Feature] = []
    for etype, (verb, verb_zh) in _COUNTED.items():
        for w in WINDOWS_DAYS:
            out.append(
                Count(
                    f"{etype}_{w}d",
                    says=f"{verb} {{value:.0f}} {{time|times}} in the last {w} days",
                    says_zh=f"近 {w} 天{verb_zh} {{value:.0f}} 次",
                    events=(etype,),
                    window_days=w,
                )
            )
    for w in WINDOWS_DAYS:
        out.append(
            Count(
                f"browse_{w}d",
                says=(f"Browsed {{value:.0f}} {{page or configuration|pages and "
                      f"configurations}} in the last {w} days"),
                says_zh=f"近 {w} 天浏览页面和配置 {{value:.0f}} 次",
                events=BROWSE_TYPES,
                window_days=w,
            )
        )
        out.append(
            Count(
                f"high_intent_{w}d",
                says=f"{{value:.0f}} {_HIGH_INTENT_EN} in the last {w} days",
                says_zh=f"近 {w} 天{_HIGH_INTENT_ZH}共 {{value:.0f}} 次",
                events=HIGH_INTENT_TYPES,
                window_days=w,
            )
        )
        out.append(
            Count(
                f"events_{w}d",
                says=f"{{value:.0f}} {{interaction|interactions}} in the last {w} days",
                says_zh=f"近 {w} 天互动 {{value:.0f}} 次",
                events=None,
                window_days=w,
            )
        )
    out.append(
        Count(
            "other_events_30d",
            says="{value:.0f} other {interaction|interactions} in the last 30 days",
            says_zh="近 30 天其他互动 {value:.0f} 次",
            other=True,
            window_days=30,
        )
    )
    return out


#: (English, Chinese) of "the last ..." per event type of the recency features
_LAST: dict[str, tuple[str, str]] = {
    "price_inquiry": ("price request", "询价"),
    "test_drive_booked": ("test drive booking", "预约试驾"),
    "store_visit": ("showroom visit", "到店"),
    "call_inbound": ("call from the lead", "来电"),
    "test_drive_done": ("test drive", "试驾"),
    "wechat_reply": ("WeChat reply", "微信回复"),
}


def _recency() -> list[Feature]:
    # missing: nothing of the kind within the lookback, which an advisor wants to know
    days = LOOKBACK_DAYS
    out: list[Feature] = [
        DaysSince("days_since_any", says="Last active {value:.1f} days ago",
                  says_zh="最近一次活跃在 {value:.1f} 天前",
                  missing=f"No activity in the last {days} days",
                  missing_zh=f"近 {days} 天没有任何活动", events=None),
        DaysSince(
            "days_since_finance_calc",
            says="Used the finance calculator {value:.1f} days ago",
            says_zh="{value:.1f} 天前使用过金融计算器",
            missing=f"Has not used the finance calculator in the last {days} days",
            missing_zh=f"近 {days} 天未使用金融计算器",
            events=("finance_calc",),
        ),
        DaysSince(
            "days_since_config_view",
            says="Opened the configurator {value:.1f} days ago",
            says_zh="{value:.1f} 天前打开过配置器",
            missing=f"Has not opened the configurator in the last {days} days",
            missing_zh=f"近 {days} 天未打开配置器",
            events=("config_view",),
        ),
    ]
    for etype in (*HIGH_INTENT_TYPES, "test_drive_done", "wechat_reply"):
        noun, noun_zh = _LAST[etype]
        out.append(
            DaysSince(
                f"days_since_{etype}",
                says=f"Last {etype.replace('_', ' ')} {{value:.1f}} days ago",
                says_zh=f"最近一次{noun_zh}在 {{value:.1f}} 天前",
                missing=f"No {noun} in the last {days} days",
                missing_zh=f"近 {days} 天没有{noun_zh}",
                events=(etype,),
            )
        )
    return out


def _behaviour() -> list[Feature]:
    # shares and the trend are missing without any activity to share: that says nothing
    # the recency features do not say better
    return [
        DistinctModels(
            "models_viewed_30d",
            says="Looked at {value:.0f} different {model|models} in 30 days",
            says_zh="30 天内看过 {value:.0f} 个不同车型", window_days=30,
        ),
        TopModelShare(
            "top_model_share_30d", says="{value:.0%} of model views on one model",
            says_zh="{value:.0%} 的车型浏览集中在同一车型", window_days=30,
        ),
        NightShare(
            "night_share_14d", says="{value:.0%} of activity between 22:00 and 06:00",
            says_zh="近 14 天 {value:.0%} 的活动在 22:00 至 06:00 之间", window_days=14,
        ),
        NightShare(
            "night_share_30d",
            says="{value:.0%} of activity between 22:00 and 06:00 (30 days)",
            says_zh="近 30 天 {value:.0%} 的活动在 22:00 至 06:00 之间",
            window_days=30,
        ),
        Sessions("sessions_7d",
                 says="{value:.0f} browsing {session|sessions} in the last 7 days",
                 says_zh="近 7 天浏览 {value:.0f} 次", window_days=7),
        Sessions("sessions_30d",
                 says="{value:.0f} browsing {session|sessions} in the last 30 days",
                 says_zh="近 30 天浏览 {value:.0f} 次", window_days=30),
        Trend("trend_7_30", says="Activity this week is {value:.1f}x the monthly pace",
              says_zh="本周活跃度是月均水平的 {value:.1f} 倍"),
        *[
            NightShare(
                f"activity_share_{a:02d}_{b:02d}",
                says=f"{{value:.0%}} of activity between {a:02d}:00 and {b:02d}:00 (30 days)",
                says_zh=f"近 30 天 {{value:.0%}} 的活动在 {a:02d}:00 至 {b:02d}:00 之间",
                window_days=30, local_hours=(a, b % 24),
            )
            for a, b in DAYPARTS
        ],
    ]


def _contacts() -> list[Feature]:
    # rates and recencies are missing until the dealer has tried: "not contacted yet" is
    # a reason in itself; the counts are 0 then, never missing
    never = {"missing": "Not contacted yet", "missing_zh": "尚未联系过"}
    return [
        ContactStat("contact_attempts", says="Contacted {value:.0f} {time|times} so far",
                    says_zh="已联系 {value:.0f} 次", stat="attempts"),
        ContactStat("contact_responses",
                    says="Answered {value:.0f} contact {attempt|attempts}",
                    says_zh="回应了 {value:.0f} 次联系", stat="responses"),
        ContactStat("contact_response_rate", says="Answered {value:.0%} of contact attempts",
                    says_zh="联系应答率 {value:.0%}", stat="response_rate", **never),
        ContactStat("contact_replies", says="Replied to {value:.0f} {message|messages}",
                    says_zh="回复了 {value:.0f} 条消息", stat="replies"),
        ContactStat("phone_attempts", says="Called {value:.0f} {time|times} so far",
                    says_zh="已致电 {value:.0f} 次", stat="phone_attempts"),
        ContactStat("message_attempts", says="Sent {value:.0f} {message|messages} so far",
                    says_zh="已发送 {value:.0f} 条消息", stat="message_attempts"),
        ContactStat("phone_response_rate", says="Answered {value:.0%} of calls",
                    says_zh="电话接听率 {value:.0%}", stat="phone_response_rate",
                    missing="Not called yet", missing_zh="尚未打过电话"),
        ContactStat("message_response_rate", says="Replied to {value:.0%} of messages",
                    says_zh="消息回复率 {value:.0%}", stat="message_response_rate",
                    missing="No messages sent yet", missing_zh="尚未发送过消息"),
        ContactStat("days_since_contact", says="Last contacted {value:.1f} days ago",
                    says_zh="最近一次联系在 {value:.1f} 天前", stat="days_since", **never),
        # a lead that stopped answering is the clearest sign that it is going dark
        ContactStat("unanswered_streak",
                    says="{value:.0f} contact {attempt|attempts} in a row without an answer",
                    says_zh="连续 {value:.0f} 次联系未获回应", stat="unanswered_streak"),
        ContactStat("days_since_response", says="Last answered a contact {value:.1f} days ago",
                    says_zh="最近一次回应联系在 {value:.1f} 天前", stat="days_since_response",
                    missing="Has never answered a contact", missing_zh="从未回应过联系"),
        ContactStat(
            "uncontacted_hours",
            says="Waited {value:.0f} {hour|hours} for a first contact",
            says_zh="等待首次联系 {value:.0f} 小时",
            stat="uncontacted_hours",
        ),
    ]


def _static() -> list[Feature]:
    # an attribute left blank says nothing; no order yet is what an owner's clock starts from
    return [
        Static("source", says="Came from {value}", says_zh="来源：{value}", dtype="category",
               column="source"),
        Static("intended_model", says="Interested in {value}", says_zh="意向车型：{value}",
               dtype="category", column="intended_model"),
        Static("budget", says="Budget {value:,.0f}", says_zh="预算 {value:,.0f}",
               column="budget"),
        Static("lead_age_days", says="Lead is {value:.0f} {day|days} old",
               says_zh="线索已创建 {value:.0f} 天", column="lead_age_days"),
        # an owner's engagement follows the car (delivery, then service months later), not the
        # purchase funnel: churn needs to tell owners apart and know how far along they are
        Static("days_since_order", says="Ordered {value:.0f} {day|days} ago",
               says_zh="{value:.0f} 天前下单", missing="No order recorded",
               missing_zh="尚无订单记录", column="days_since_order"),
        # carried for local-time slot planning; not a model input (see LEAD_BEHAVIOUR)
        Static("tz", says="Dealer time zone {value}", says_zh="经销商时区 {value}",
               dtype="category", column="tz"),
    ]


#: (name prefix, event types, what the advisor reads in English, in Chinese) of the
#: whole-history groups; a Chinese count carries ``<when>``: the window it counts over
HISTORY_GROUPS: tuple[tuple[str, tuple[str, ...] | None, dict[str, str], dict[str, str]],
                      ...] = (
    ("events", None,
     {"count": "{value:.0f} {interaction|interactions}", "first": "First seen",
      "last": "Last seen", "gap": "Usually returns every", "days": "Active",
      "never": "No interactions recorded"},
     {"count": "<when>互动 {value:.0f} 次", "first": "首次出现", "last": "最近一次出现",
      "gap": "通常每隔 {value:.0f} 天回访一次", "days": "有活动", "what": "活动",
      "never": "没有任何互动记录"}),
    ("orders", ("order",),
     {"count": "Ordered {value:.0f} {time|times}", "last": "Last ordered",
      "gap": "Usually orders every", "days": "Ordered",
      "sum": "Orders worth {value:,.0f} in total",
      "mean": "Average order value {value:,.0f}", "never": "No order recorded"},
     {"count": "<when>下单 {value:.0f} 次", "last": "最近一次下单",
      "gap": "通常每隔 {value:.0f} 天下单一次", "days": "下过单", "what": "下单",
      "sum": "订单总额 {value:,.0f}", "mean": "平均订单金额 {value:,.0f}",
      "never": "尚无订单记录"}),
    ("service", ("service_visit",),
     {"count": "{value:.0f} service {visit|visits}", "first": "First service visit",
      "last": "Last service visit", "gap": "Comes for service every",
      "days": "Came for service", "sum": "Spent {value:,.0f} on service in total",
      "never": "No service visit recorded"},
     {"count": "<when>保养 {value:.0f} 次", "first": "首次保养", "last": "最近一次保养",
      "gap": "通常每隔 {value:.0f} 天来保养一次", "days": "来保养过", "what": "保养",
      "sum": "保养总花费 {value:,.0f}", "never": "尚无保养记录"}),
    ("inbound", INBOUND_TYPES,
     {"count": "Got in touch {value:.0f} {time|times}", "first": "First got in touch",
      "last": "Last got in touch", "gap": "Usually gets in touch every",
      "days": "Got in touch", "never": "Has never got in touch"},
     {"count": "<when>主动联系 {value:.0f} 次", "first": "首次主动联系",
      "last": "最近一次主动联系", "gap": "通常每隔 {value:.0f} 天主动联系一次",
      "days": "主动联系过", "what": "主动联系", "never": "从未主动联系过"}),
    ("high_intent_hist", HIGH_INTENT_TYPES,
     {"count": "{value:.0f} " + _HIGH_INTENT_EN,
      "last": "Last price request, test drive, visit or call",
      "never": "No price request, test drive, visit or call recorded"},
     {"count": f"<when>{_HIGH_INTENT_ZH}共 {{value:.0f}} 次",
      "last": f"最近一次{_HIGH_INTENT_ZH}", "never": f"没有{_HIGH_INTENT_ZH}记录"}),
)


def _history() -> list[Feature]:
    """Whole-history features per group: counts over the whole history and 365/180 days, then
    whatever the group's sentences cover (tenure, recency, rhythm, value, pace). Only the
    recency says something when missing (nothing of the kind ever); the others are missing
    then too, or when there is too little history to tell, which is no reason."""
    out: list[Feature] = []
    for slug, types, say, zh in HISTORY_GROUPS:

        def add(name: str, says: str, says_zh: str, stat: str, window: int | None = None,
                slug: str = slug, types: tuple[str, ...] | None = types, **missing) -> None:
            out.append(History(f"{slug}_{name}", says=says, says_zh=says_zh, stat=stat,
                               events=types, window_days=window, **missing))

        add("count_all", f"{say['count']} over the whole history",
            zh["count"].replace("<when>", "历史上共"), "count")
        for w in (365, 180):
            add(f"count_{w}d", f"{say['count']} in the last {w} days",
                zh["count"].replace("<when>", f"近 {w} 天"), "count", w)
        if "first" in say:
            add("tenure_days", f"{say['first']} {{value:.0f}} {{day|days}} ago",
                f"{zh['first']}在 {{value:.0f}} 天前", "tenure")
        add("days_since_last", f"{say['last']} {{value:.0f}} {{day|days}} ago",
            f"{zh['last']}在 {{value:.0f}} 天前", "since_last",
            missing=say["never"], missing_zh=zh["never"])
        if "gap" in say:
            add("active_days", f"{say['days']} on {{value:.0f}} different {{day|days}}",
                f"在 {{value:.0f}} 个不同的日子{zh['days']}", "active_days")
            add("typical_gap_days", f"{say['gap']} {{value:.0f}} {{day|days}}", zh["gap"],
                "typical_gap")
            add("overdue", f"{say['last']} {{value:.1f}}x the usual gap ago (1 = on schedule)",
                f"距上次{zh['what']}已是通常间隔的 {{value:.1f}} 倍（1 = 按时）", "overdue")
        if "sum" in say:
            add("value_sum", say["sum"], zh["sum"], "value_sum")
        if "mean" in say:
            add("value_mean", say["mean"], zh["mean"], "value_mean")
    for slug, types, what, what_zh in (("events", None, "Activity", "活跃度"),
                                       ("inbound", INBOUND_TYPES, "Getting in touch",
                                        "主动联系频率")):
        out.append(History(f"{slug}_pace_trend", stat="pace_trend", events=types,
                           window_days=LOOKBACK_DAYS,
                           says=f"{what} in the last {LOOKBACK_DAYS} days is {{value:.1f}}x "
                                f"the long-run pace",
                           says_zh=f"近 {LOOKBACK_DAYS} 天{what_zh}是长期水平的 "
                                   f"{{value:.1f}} 倍"))
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
    SlotFeature("slot_hour", says="Local hour {value:.0f}:00", says_zh="当地时间 {value:.0f}:00"),
    SlotFeature("slot_weekday", says="Weekday {value:.0f} (0 = Monday)",
                says_zh="星期序号 {value:.0f}（0 = 周一）"),
    SlotFeature("slot_weekend", says="Weekend slot" + "{value:.0f}"[:0],
                says_zh="周末时段" + "{value:.0f}"[:0]),
    SlotFeature("slot_activity_share",
                says="{value:.0%} of this lead's activity falls in this part of the day",
                says_zh="该线索 {value:.0%} 的活动落在这个时段"),
    SlotFeature("channel", says="By {value}", says_zh="通过 {value} 联系", dtype="category"),
    SlotFeature("slot_channel_attempts",
                says="Tried {value:.0f} {time|times} before on this kind of channel",
                says_zh="此前在这类渠道尝试过 {value:.0f} 次"),
    SlotFeature("slot_channel_response_rate",
                says="Answered {value:.0%} of earlier attempts on this kind of channel",
                says_zh="此前在这类渠道的应答率 {value:.0%}"),
)
BY_NAME: dict[str, Feature] = {f.name: f for f in (*CATALOG, *SLOT_CATALOG)}

#: Feature services: the feature lists models pick from.
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
        return Count(name, says=f"Did {shown} {{value:.0f}} {{time|times}} in the last {w} days",
                     says_zh=f"近 {w} 天做了 {shown} {{value:.0f}} 次", events=ev,
                     window_days=w)
    if kind == "count_all":
        return History(name,
                       says=f"Did {shown} {{value:.0f}} {{time|times}} over the whole history",
                       says_zh=f"历史上共做了 {shown} {{value:.0f}} 次", stat="count",
                       events=ev)
    if kind == "days_since_last":  # missing: never, which is worth saying
        return History(name, says=f"Last did {shown} {{value:.0f}} {{day|days}} ago",
                       says_zh=f"最近一次做 {shown} 在 {{value:.0f}} 天前",
                       missing=f"Never did {shown}", missing_zh=f"从未做过 {shown}",
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
    if dtype == "category":
        says, says_zh = f"CRM field {shown}: {{value}}", f"CRM 字段 {shown}：{{value}}"
    else:
        says, says_zh = f"CRM field {shown} {{value:g}}", f"CRM 字段 {shown} 为 {{value:g}}"
    # a CRM field left empty is the dealer's own record of not knowing: say so
    return LeadColumn(f"{COLUMN_PREFIX}{_type_slug(column)}__{kind}", says=says,
                      says_zh=says_zh, missing=f"CRM field {shown} is empty",
                      missing_zh=f"CRM 字段 {shown} 为空", dtype=dtype, column=column)


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
