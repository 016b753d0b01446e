"""Why a window ended the way it did: one vocabulary for the engine, the policies, the worker and the outputs.

Codes are small integers so decisions stay int64 tensors on the device; names are what messages and InfluxDB carry.
Escalations always say which kind of "does not know" they are:

- ``ambiguous`` / ``budget`` / ``low_sp``: the model hesitates between known classes (MC passes disagree, SP low);
- ``unfamiliar``: the window is unlike the training data (novelty score above its validation threshold);
- ``signal_quality``: the input failed a cheap check before the model (flat line, clipping, amplitude, spectrum);
- ``unsupported_lead``: no model serves the window's (modality, lead).

>>> Reason.BUDGET.label
'budget'
>>> Reason.from_label("unfamiliar") is Reason.UNFAMILIAR
True
>>> [r.label for r in ABSTAIN_REASONS][:2]
['budget', 'low_sp']
"""

from __future__ import annotations

from enum import IntEnum


class Reason(IntEnum):
    """Reason codes; ``SAMPLING`` means "not decided yet" and never leaves the engine."""

    SAMPLING = 0
    PLATEAU = 1  # stopped: SP stopped moving above the floor (paper rule)
    THRESHOLD = 2  # stopped: SP ≥ SP*
    SEPARATED = 3  # stopped: top class separated from the runner-up with confidence
    BUDGET = 4  # abstained: still undecided after t_max passes
    LOW_SP = 5  # abstained early: SP below the abstain floor
    AMBIGUOUS = 6  # abstained: confidence below the risk-controlled threshold
    UNFAMILIAR = 7  # abstained before sampling: novelty above threshold
    SIGNAL_QUALITY = 8  # abstained before sampling: input check failed
    UNSUPPORTED_LEAD = 9  # abstained: no model serves this (modality, lead)
    CONFIDENT = 10  # stopped: undecided by the policy at the budget, yet confident enough for the risk rule

    @property
    def label(self) -> str:
        """The lower-case name used in messages and storage."""
        return self.name.lower()

    @classmethod
    def from_label(cls, label: str) -> Reason:
        return cls[label.upper()]


ABSTAIN_REASONS: tuple[Reason, ...] = (Reason.BUDGET, Reason.LOW_SP, Reason.AMBIGUOUS, Reason.UNFAMILIAR,
                                       Reason.SIGNAL_QUALITY, Reason.UNSUPPORTED_LEAD)
