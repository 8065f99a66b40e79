"""One spec per model. ``get(name)`` is the only lookup training and the CLI use."""

from __future__ import annotations

from importlib import import_module

from leadscore.models.spec import ModelSpec

#: the time-to-order models beside the 30-day conversion model (one module: leadscore.models.order)
ORDER_NAMES = ("order-7d", "order-15d", "order-90d")
#: training order: the 30-day model after the other horizons, so that its run chooses the
#: four intent-grade thresholds together (leadscore.training.run.time_to_order)
NAMES = (*ORDER_NAMES, "conversion", "contact", "churn", "contact-slot")
_MODULES = {"conversion": "conversion", "contact": "contact", "churn": "churn",
            "contact-slot": "contact_slot", **{n: "order" for n in ORDER_NAMES}}


def get(name: str) -> ModelSpec:
    if name not in _MODULES:
        raise KeyError(f"unknown model {name!r}; choose one of {', '.join(_MODULES)}")
    module = import_module(f"leadscore.models.{_MODULES[name]}")
    spec = module.SPECS[name] if name in ORDER_NAMES else module.SPEC
    return spec.validate()
