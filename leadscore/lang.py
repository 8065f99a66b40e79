"""The languages reasons are written in: English and Simplified Chinese.

One tag per language (``en``, ``zh-CN``). The deployment's default comes from
``LEADSCORE_LANG`` and is read only at the edges (the CLI, the service at start-up), then passed
into the scorer, as the contact and intent rules are; HTTP clients choose per request with
``Accept-Language``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

EN = "en"
ZH = "zh-CN"
LANGS: tuple[str, ...] = (EN, ZH)
ENV = "LEADSCORE_LANG"

#: how the CSV labels each model's reasons, per language
MODEL_LABELS: dict[str, dict[str, str]] = {
    EN: {"conversion": "conversion", "contact": "contact", "churn": "churn",
         "contact-slot": "contact slot"},
    ZH: {"conversion": "成交", "contact": "主动联系", "churn": "流失",
         "contact-slot": "联系时段"},
}
#: channel names as a sentence says them
CHANNEL_WORDS: dict[str, dict[str, str]] = {
    EN: {"phone": "phone", "wechat": "wechat", "sms": "sms"},
    ZH: {"phone": "电话", "wechat": "微信", "sms": "短信"},
}


def normalize(tag: str | None) -> str | None:
    """The language a tag asks for: zh, zh-CN, zh-Hans (and zh-Hans-*) → zh-CN; en and en-*
    → en; anything else (zh-TW, fr, ``*``) → None. Case does not matter."""
    if not tag:
        return None
    t = tag.strip().replace("_", "-").lower()
    if t in ("zh", "zh-cn", "zh-hans") or t.startswith("zh-hans-"):
        return ZH
    if t == "en" or t.startswith("en-"):
        return EN
    return None


def check(tag: str, where: str = "language") -> str:
    """``tag`` as one of :data:`LANGS`, or ValueError naming ``where`` and the choices."""
    got = normalize(tag)
    if got is None:
        raise ValueError(f"{where}: unknown language {tag!r}; expected one of "
                         f"{', '.join(LANGS)}")
    return got


def from_env(environ: Mapping[str, str] = os.environ) -> str:
    """The deployment's default language: ``LEADSCORE_LANG``, else English."""
    value = environ.get(ENV, "").strip()
    return check(value, ENV) if value else EN


def accept_language(header: str | None) -> str | None:
    """The language of an ``Accept-Language`` header: the acceptable tag with the highest
    q-value (the first on a tie) that names one of ours; None when none does."""
    if not header:
        return None
    best: tuple[float, int, str] | None = None
    for pos, part in enumerate(header.split(",")):
        tag, *params = part.split(";")
        q = 1.0
        for p in params:
            name, _, value = p.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        got = normalize(tag)
        if got is None or not q > 0:
            continue
        if best is None or (-q, pos) < (-best[0], best[1]):
            best = (q, pos, got)
    return None if best is None else best[2]


def label(model: str, lang: str) -> str:
    """How the CSV names ``model`` in ``lang`` (its own name when it has no label)."""
    return MODEL_LABELS.get(lang, MODEL_LABELS[EN]).get(model, model)
