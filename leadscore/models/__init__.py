"""One spec per model. ``get(name)`` is the only lookup training and the CLI use."""

from __future__ import annotations

from importlib import import_module

from leadscore.models.spec import ModelSpec

NAMES = ("conversion", "contact", "churn", "contact-slot")
_MODULES = {"conversion": "conversion", "contact": "contact", "churn": "churn",
            "contact-slot": "contact_slot"}


def get(name: str) -> ModelSpec:
    if name not in _MODULES:
        raise KeyError(f"unknown model {name!r}; choose one of {', '.join(_MODULES)}")
    return import_module(f"leadscore.models.{_MODULES[name]}").SPEC.validate()
