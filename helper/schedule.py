"""The published early-stopping learning-rate schedule, as one small object.

Validate after every pseudo-epoch. A validation accuracy above the best so far is an improvement (the
trainer keeps those weights). After ``patience`` pseudo-epochs without one, the learning-rate phase ends:
the trainer goes back to the best weights and the next phase trains at ``learning_rate * decay_rate**k``
(k = phases done). The run stops when ``phases`` phases have ended or after ``max_epochs`` pseudo-epochs,
whichever comes first. ``phases`` is the published ``--lr_decay_times``: 3 means three learning rates
(two decays).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

CONTINUE, DECAY, STOP = "continue", "decay", "stop"


@dataclass(frozen=True)
class ScheduleStep:
    """What one validation means: did it improve, and what the trainer does next."""

    improved: bool
    action: str  # CONTINUE, DECAY or STOP


class PlateauSchedule:
    """``update(val_acc)`` after each pseudo-epoch returns continue / decay / stop; ``state_dict`` resumes it exactly."""

    def __init__(self, learning_rate: float, patience: int, decay_rate: float, phases: int, max_epochs: int) -> None:
        if learning_rate <= 0 or patience < 0 or phases < 1 or max_epochs < 1 or not decay_rate > 0:
            raise ValueError(f"invalid schedule: learning_rate={learning_rate}, patience={patience}, decay_rate={decay_rate}, "
                             f"phases={phases}, max_epochs={max_epochs}")
        self.base_lr = float(learning_rate)
        self.patience = int(patience)
        self.decay_rate = float(decay_rate)
        self.phases = int(phases)
        self.max_epochs = int(max_epochs)
        self.epoch = 0
        self.phase = 0
        self.best_acc = -math.inf
        self.best_epoch = 0
        self.epochs_since_best = 0

    @property
    def lr(self) -> float:
        """The learning rate of the current phase (recomputed from the base, as published)."""
        return self.base_lr * self.decay_rate ** self.phase

    @property
    def decays(self) -> int:
        """Learning-rate decays applied so far."""
        return self.phase

    def update(self, val_acc: float) -> ScheduleStep:
        """Record the validation accuracy of the pseudo-epoch that just ended."""
        self.epoch += 1
        improved = val_acc > self.best_acc
        if improved:
            self.best_acc, self.best_epoch, self.epochs_since_best = float(val_acc), self.epoch, 0
        else:
            self.epochs_since_best += 1
        if self.epoch >= self.max_epochs:
            return ScheduleStep(improved, STOP)
        if self.epochs_since_best >= self.patience:
            self.epochs_since_best = 0
            if self.phase + 1 >= self.phases:
                return ScheduleStep(improved, STOP)
            self.phase += 1
            return ScheduleStep(improved, DECAY)
        return ScheduleStep(improved, CONTINUE)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "phase": self.phase, "best_acc": self.best_acc, "best_epoch": self.best_epoch,
                "epochs_since_best": self.epochs_since_best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.phase = int(state["epoch"]), int(state["phase"])
        self.best_acc, self.best_epoch = float(state["best_acc"]), int(state["best_epoch"])
        self.epochs_since_best = int(state["epochs_since_best"])
