"""Contact urgency: will this open lead take a high-intent action within 72 hours?

A lead about to ask for a price, book a test drive, walk in or call is one to reach now: contact
within that window converts best. The score drives now / within 3 days / nurture.
"""

from leadscore.features.catalog import LEAD_BEHAVIOUR, WINDOWS_DAYS
from leadscore.models.spec import Gate, ModelSpec, Within
from leadscore.schema import HIGH_INTENT_TYPES

SPEC = ModelSpec(
    name="contact",
    description="Probability of a high-intent inbound action within 72 hours.",
    entity="open",
    label=Within(HIGH_INTENT_TYPES, days=3),
    features=LEAD_BEHAVIOUR,
    monotone={f"finance_calc_{w}d": +1 for w in WINDOWS_DAYS},
    calibration="isotonic",
    gate=Gate("roc_auc", min_gain=0.002),
    # urgency: "now" >= 0.5, "within 3 days" >= 0.2, else nurture (A/B/C/D kept for symmetry)
    grades=(0.5, 0.2, 0.08),
    truth_column="p_inquiry_72h",
    known_limits=("Urgency only; the best hour and channel come from the slot model.",),
)
