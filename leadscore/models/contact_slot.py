"""Contact slot: will this attempt — at this local hour, weekday, by this channel — be answered?

Rows are the advisors' logged contact attempts; features are the lead's state just before the
attempt plus the slot's properties. At serving time the same model ranks every allowed slot of
the next 72 hours. The response rate the recommendations would reach versus the advisors' own
policy is logged with each run (``policy_*`` metrics; see ``training.policy_eval``).
"""

from leadscore.features.catalog import SLOT_CONTEXT
from leadscore.models.spec import Gate, ModelSpec, Responded

SPEC = ModelSpec(
    name="contact-slot",
    description="Probability that a contact attempt in a given slot and channel is answered.",
    entity="contact_attempt",
    label=Responded(),
    features=SLOT_CONTEXT,
    params={
        "objective": "binary", "learning_rate": 0.05, "num_leaves": 31, "max_depth": 6,
        "min_data_in_leaf": 100, "feature_fraction": 0.9, "bagging_fraction": 0.8,
        "bagging_freq": 1, "lambda_l2": 1.0, "max_bin": 255, "num_boost_round": 2000,
        "early_stopping_rounds": 100,
    },
    calibration="isotonic",
    gate=Gate("roc_auc", min_gain=0.002),
    grades=(0.5, 0.3, 0.15),
    truth_column="p_response",
    known_limits=(
        "Learns from the advisors' logged choices: slots they never try (e.g. weekend nights) "
        "are extrapolated; the policy evaluation reports how far that can be trusted.",
        "A lead that has gone dark answers nothing; the model sees only its silence.",
    ),
)
