"""Time to order: will this open lead order within 7, 15 or 90 days?

The conversion model is the 30-day one; these are the same spec at the other horizons (same
features, monotone constraints, calibration, point-in-time and censoring rules: a cutoff whose
window is not observed is censored, never a negative). Each horizon is its own binary model:
a 7-day label has its own signal (a finance calculator opened yesterday), which the 30-day
model mixes with slower buyers. Yet its labels are sparse (a 90-day window is observed
for fewer, older cutoffs, a 7-day one has few positives), so the run keeps the ranking the
30-day labels teach on the same rows unless its own is clearly better
(:mod:`leadscore.training.horizons`). Per-horizon models can cross (a lead's
7-day probability above its 15-day one); scoring takes running minima below 30 days and a
maximum above it
(:func:`leadscore.scoring.intent.monotone`), so P(order within h) never falls as h grows and
the 30-day probability stays exactly ``p_convert``. Reasons come from the 30-day model only:
three more reason passes would triple their cost for sentences advisors read once.
"""

from dataclasses import replace

from leadscore.models.conversion import SPEC as CONVERSION

#: horizons (days) of the time-to-order models besides the 30-day conversion model
HORIZONS = (7, 15, 90)


def _spec(days: int):
    return replace(
        CONVERSION.with_horizon(days),
        name=f"order-{days}d",
        description=f"Probability that an open lead places an order within {days} days.",
        truth_column=None,  # the simulator's truth is for 30 days only
    )


SPECS = {f"order-{d}d": _spec(d) for d in HORIZONS}
