"""Training callbacks of `distill train`.

`LogpsGuard` watches DPO's chosen log-probabilities: the summed log-probability (nats) the policy gives the
chosen answers. DPO's loss only asks for a growing margin between chosen and rejected; it is met just as well by
pushing both down, and with a step that is too large (or rejected answers the policy already finds absurd) that
is what happens: the chosen answers' log-probability falls tens of nats while the margin grows, and the student's
own answers fall apart ("likelihood displacement"). TRL logs the numbers but ships no guard.

What the guard compares. TRL logs, every `logging_steps`, the batch means `logps/chosen` (policy) and
`rewards/chosen` = beta * (policy - reference) log-probability of the same chosen answers. `logps/chosen` alone
moves with the batch: a batch of long answers has a lower summed log-probability than one of short answers, and
on real BFCL pairs it jumps 15+ nats between consecutive batches of 2 pairs with no training at all. So the guard
measures the drop on the same answers: `rewards/chosen / beta`, the chosen answers' log-ratio to the reference
model (the policy before DPO, whose weights do not move), against its first logged value (about 0 when the
reference is the starting policy). Where `rewards/chosen` or beta is missing, it falls back to `logps/chosen`
against its first logged value.

    guard = LogpsGuard(max_drop_nats=10.0, stop=True, beta=0.1)   # recipe keys logps_guard_nats, logps_guard_stop
    trainer = DPOTrainer(..., callbacks=[guard])
    # step 5:  rewards/chosen -0.02  -> chosen log-ratio -0.2 nats (first value: the reference point)
    # step 10: rewards/chosen -1.45  -> -14.5 nats: 14.3 below -0.2 > 10: warning, and training stops (stop=True)
    guard.summary()   # {"measure": "logratio", "max_drop_nats": 10.0, "first": -0.2, "tripped": {"step": 10, ...}}

A value that is not finite (NaN, -inf) trips the guard as well: the run is broken either way.
"""

from __future__ import annotations

import logging
import math

from transformers import TrainerCallback

logger = logging.getLogger("distill.train")

LOGRATIO = "logratio"  # rewards/chosen / beta: the chosen answers' log-ratio to the reference, same batch
LOGPS = "logps/chosen"  # the policy's summed log-probability of the chosen answers, compared across batches


class LogpsGuard(TrainerCallback):
    """Warns (and with `stop`, ends training) once the chosen answers' log-probability falls more than
    `max_drop_nats` below where it started (module docstring: measured against the reference on the same batch
    when `beta` is given and TRL logs `rewards/chosen`). Only the training log is watched: evaluation logs carry
    `eval_`-prefixed keys."""

    def __init__(self, max_drop_nats: float, stop: bool = False, beta: float | None = None):
        if isinstance(max_drop_nats, bool) or not isinstance(max_drop_nats, (int, float)) or not max_drop_nats > 0:
            raise ValueError(f"max_drop_nats must be a positive number of nats, got {max_drop_nats!r}")
        if beta is not None and not (isinstance(beta, (int, float)) and beta > 0):
            raise ValueError(f"beta must be a positive number, got {beta!r}")
        self.max_drop_nats = float(max_drop_nats)
        self.stop = stop
        self.beta = float(beta) if beta is not None else None
        self.measure: str | None = None  # LOGRATIO or LOGPS, fixed by the first log that carries either
        self.first: float | None = None
        self.first_step: int | None = None
        self.last: float | None = None
        self.lowest: float | None = None
        self.logps_first: float | None = None
        self.logps_last: float | None = None
        self.tripped: dict | None = None

    def _value(self, logs: dict) -> float | None:
        """The watched number of this log, in nats; None when the log carries neither key."""
        if self.measure is None:
            if self.beta is not None and "rewards/chosen" in logs:
                self.measure = LOGRATIO
            elif LOGPS in logs:
                self.measure = LOGPS
            else:
                return None
        if self.measure == LOGRATIO:
            return float(logs["rewards/chosen"]) / self.beta if "rewards/chosen" in logs else None
        return float(logs[LOGPS]) if LOGPS in logs else None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs:
            return control
        if LOGPS in logs:
            self.logps_last = float(logs[LOGPS])
            if self.logps_first is None:
                self.logps_first = self.logps_last
        value = self._value(logs)
        if value is None:
            return control
        step = state.global_step
        self.last = value
        if self.first is None and math.isfinite(value):
            self.first, self.first_step, self.lowest = value, step, value
            return control
        if math.isfinite(value):
            self.lowest = min(self.lowest, value) if self.lowest is not None else value
        reference = self.first if self.first is not None else value
        drop = reference - value if math.isfinite(value) else math.inf
        if self.tripped is None and drop > self.max_drop_nats:
            self.tripped = {"step": step, "value": value, "drop_nats": drop, "stopped": self.stop}
            action = "stopping training (logps_guard_stop: true)" if self.stop else "set logps_guard_stop: true to stop"
            what = ("the chosen answers' log-probability relative to the reference model (rewards/chosen / beta)"
                    if self.measure == LOGRATIO else "logps/chosen")
            logger.warning(
                "%s fell to %.2f at step %d, %.2f nats below its first logged value %s (step %s), more than the "
                "guard's %.1f: the chosen answers are being pushed down with the rejected ones (likelihood "
                "displacement); lower learning_rate or add an sft term (loss_type: [sigmoid, sft]). %s",
                what, value, step, drop, "none" if self.first is None else f"{self.first:.2f}",
                self.first_step, self.max_drop_nats, action,
            )
        if self.tripped is not None and self.stop:
            control.should_training_stop = True
        return control

    def summary(self) -> dict:
        """What run.json records: what was measured, the threshold, the first, lowest and last values, whether
        (and where) the guard tripped and stopped the run, and logps/chosen's first and last values."""
        return {
            "measure": self.measure,
            "beta": self.beta,
            "max_drop_nats": self.max_drop_nats,
            "stop": self.stop,
            "first": self.first,
            "first_step": self.first_step,
            "lowest": self.lowest,
            "last": self.last,
            "tripped": self.tripped,
            "logps_chosen_first": self.logps_first,
            "logps_chosen_last": self.logps_last,
        }
