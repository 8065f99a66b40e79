"""The data contract's vocabulary, shared by the simulator, the loaders, features and labels.

Kept in one small module so that a new event type or channel is added in exactly one place.
"""

from __future__ import annotations

DEFAULT_TZ = "Asia/Shanghai"

#: Event types named by the contract. Other types are accepted and counted generically.
STANDARD_EVENT_TYPES: tuple[str, ...] = (
    "page_view",
    "config_view",
    "finance_calc",
    "price_inquiry",
    "test_drive_booked",
    "test_drive_done",
    "store_visit",
    "call_inbound",
    "wechat_reply",
    "order",
    "delivery",
    "service_visit",
    "lost",
)

#: Actions the lead takes on their own initiative: the default "engagement" for churn.
INBOUND_TYPES: tuple[str, ...] = (
    "page_view",
    "config_view",
    "finance_calc",
    "price_inquiry",
    "test_drive_booked",
    "test_drive_done",
    "store_visit",
    "call_inbound",
    "wechat_reply",
    "service_visit",
)

#: Inbound actions that signal buying intent: the contact-urgency label.
HIGH_INTENT_TYPES: tuple[str, ...] = (
    "price_inquiry",
    "test_drive_booked",
    "store_visit",
    "call_inbound",
)

#: Browsing: what "views" means in the dealer rule of thumb (10+ views and a finance click).
BROWSE_TYPES: tuple[str, ...] = ("page_view", "config_view")

#: Events that close a lead (it is no longer an open lead once one of these is visible).
CLOSING_TYPES: tuple[str, ...] = ("order", "lost")

CHANNELS: tuple[str, ...] = ("phone", "wechat", "sms")
OUTCOMES: tuple[str, ...] = ("connected", "replied", "no_answer", "ignored", "refused")
RESPONSE_OUTCOMES: tuple[str, ...] = ("connected", "replied")

#: Channels that are a quiet message rather than a ringing phone.
MESSAGE_CHANNELS: tuple[str, ...] = ("wechat", "sms")
