"""The evaluation gate: does a retrained candidate replace the current version?

Both models are measured on the same two held-out sets:

- the **original test split**: accuracy of every exit;
- a **held-out slice of the hard examples** (chosen by id hash, so the same examples stay out
  of training job after job): pooled accuracy over every exit an example's input reaches
  (cut-1 features reach exits 2 and 3, cut-2 features exit 3, a raw input all three),
  against its label (human, else teacher).

Each exit alone is what the model learned; what nodes deploy is the cascade, each model at
its own temperatures and thresholds. So both sets are also answered by each model's
**cascade** (a raw input from exit 1 on, cut-1 features from exit 2, cut-2 features at
exit 3), and its accuracy compared.

The rule: promote only if the candidate gains at least ``min_gain`` points (and more than
zero) on the new slice, the slice holds at least ``min_holdout`` examples, no exit loses
more than ``tolerance`` points on the original test split, and the cascade loses no more
than ``tolerance`` points on either set (a candidate whose thresholds give away what its
exits gained does not ship). Pooling every reachable exit
matters because teacher labels are the current model's own final-exit answers: on those,
the current final exit is right by construction, and what retraining can improve is the
early exits learning from the teacher (fewer inputs sent upstream); human labels can
improve the final exit too.

**When the class list grew** (class-incremental retraining), the current model has no
output for the added classes, so comparing the two models on them would count the
current model's certain miss as the candidate's gain. The original test split and the
held-out slice above hold only the classes both models have (accuracy there is compared
as always, the gain on the slice then not required); the held-out examples of the added
classes are measured on the candidate alone (``new_classes``, pooled over reachable exits
like the slice; ``cascade_new_classes``), reported, and must reach ``min_new_classes``
points. The slice must still hold ``min_holdout`` examples in all.

Pure numpy, no I/O: the numbers in, a decision with every number out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


def id_position(example_id: str) -> float:
    """Where an example falls in [0, 1), a function of its id only (ids are sha256 hex: uniform)."""
    return int(example_id[-8:], 16) / 2**32


def in_holdout(example_id: str, fraction: float) -> bool:
    """Whether a hard example belongs to the gate's held-out slice (stable: a function of its id)."""
    return id_position(example_id) < fraction


@dataclass(frozen=True)
class Scores:
    """One model measured for the gate: accuracies as fractions in [0, 1]."""

    original: tuple[float, ...]  # per exit, on the original test split
    new: float  # pooled over reachable exits, on the held-out hard examples
    n_original: int
    n_new: int  # held-out examples (not exit evaluations)
    cascade_original: float | None = None  # the cascade at the model's thresholds; None: not measured
    cascade_new: float | None = None
    n_new_classes: int = 0  # held-out examples of classes the current model does not have
    new_classes: float | None = None  # pooled over reachable exits on those; None: this model has none
    cascade_new_classes: float | None = None


def pooled_accuracy(correct: list[np.ndarray]) -> float:
    """Share of right answers over every (example, exit) evaluation; 0 when there are none."""
    total = sum(len(c) for c in correct)
    return float(sum(int(np.sum(c)) for c in correct) / total) if total else 0.0


@dataclass(frozen=True)
class GateRule:
    """Thresholds of the gate, in percentage points."""

    min_gain: float = 0.5
    tolerance: float = 0.5
    min_holdout: int = 20
    min_new_classes: float = 25.0  # accuracy on held-out examples of added classes, when there are any


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict with the numbers it was taken on (points are accuracy x 100)."""

    promote: bool
    reason: str
    gain: float  # candidate minus current on the new slice, points
    drops: tuple[float, ...]  # current minus candidate per exit on the original test split, points
    current: Scores
    candidate: Scores
    rule: GateRule
    # current minus candidate cascade accuracy, points, by set ("original", "new")
    cascade_drops: dict[str, float] = field(default_factory=dict)

    @property
    def old_classes_change(self) -> float:
        """Candidate minus current on the original test split, points: the cascade's when measured,
        else the worst exit's."""
        if "original" in self.cascade_drops:
            return -self.cascade_drops["original"]
        return -max(self.drops, default=0.0)

    def to_json(self) -> dict[str, Any]:
        return {
            "promote": self.promote,
            "reason": self.reason,
            "gain_points": round(self.gain, 4),
            "old_classes_change_points": round(self.old_classes_change, 4),
            "original_drop_points": [round(d, 4) for d in self.drops],
            "cascade_drop_points": {k: round(d, 4) for k, d in self.cascade_drops.items()},
            "current": asdict(self.current),
            "candidate": asdict(self.candidate),
            "rule": asdict(self.rule),
        }


def decide(current: Scores, candidate: Scores, rule: GateRule) -> GateDecision:
    """Apply the gate's rule (see the module docstring)."""
    gain = 100.0 * (candidate.new - current.new)
    drops = tuple(100.0 * (c - n) for c, n in zip(current.original, candidate.original, strict=True))
    worst = max(drops, default=0.0)
    cascade_drops = {
        name: 100.0 * (old - new)
        for name, old, new in (
            ("original", current.cascade_original, candidate.cascade_original),
            ("new", current.cascade_new, candidate.cascade_new),
        )
        if old is not None and new is not None
    }
    cascade_worst = max(cascade_drops.items(), key=lambda item: item[1], default=("", 0.0))
    held_out = candidate.n_new + candidate.n_new_classes
    grew = candidate.n_new_classes > 0
    new_classes = 100.0 * (candidate.new_classes or 0.0)
    if held_out < rule.min_holdout:
        promote, reason = (
            False,
            f"only {held_out} held-out hard examples; the gate needs {rule.min_holdout}",
        )
    elif not grew and (gain <= 0 or gain < rule.min_gain):
        promote, reason = False, f"gain {gain:+.2f} points on new data; needs >= {rule.min_gain} and > 0"
    elif grew and new_classes < rule.min_new_classes:
        promote = False
        reason = (
            f"added classes {new_classes:.2f}% right on held-out examples; needs >= {rule.min_new_classes}"
        )
    elif worst > rule.tolerance:
        exit_no = drops.index(worst) + 1
        promote = False
        reason = (
            f"exit {exit_no} drops {worst:.2f} points on the original test data; tolerance {rule.tolerance}"
        )
    elif cascade_worst[1] > rule.tolerance:
        where = "original test" if cascade_worst[0] == "original" else "held-out new"
        promote = False
        reason = (
            f"the cascade drops {cascade_worst[1]:.2f} points on the {where} data; tolerance {rule.tolerance}"
        )
    else:
        promote = True
        reason = f"gain {gain:+.2f} points on new data; worst original drop {worst:.2f} <= {rule.tolerance}"
        if grew:
            reason = f"added classes {new_classes:.2f}% right; " + reason
        if cascade_drops:
            reason += "; cascade " + ", ".join(f"{k} {-d:+.2f}" for k, d in cascade_drops.items())
    return GateDecision(promote, reason, gain, drops, current, candidate, rule, cascade_drops)
