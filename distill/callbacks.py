"""Training callbacks of `distill train`.

`LogpsGuard` watches DPO's `logps/chosen`: the summed log-probability (nats) the policy gives the chosen answers,
which TRL's DPOTrainer logs every `logging_steps`. DPO's loss only asks for a growing margin between chosen and
rejected; it is met just as well by pushing both down, and with a step that is too large (or rejected answers the
policy already finds absurd) that is what happens: the chosen answers' log-probability falls tens of nats while
the margin grows, and the student's own answers fall apart ("likelihood displacement"). TRL logs the numbers but
ships no guard, so this one compares each logged value with the first:

    guard = LogpsGuard(max_drop_nats=10.0, stop=True)    # recipe keys logps_guard_nats, logps_guard_stop
    trainer = DPOTrainer(..., callbacks=[guard])
    # step 5:  logps/chosen -2.9    (first value: the reference point)
    # step 10: logps/chosen -16.9   -> 14.0 nats below -2.9 > 10: warning, and training stops (stop=True)
    guard.summary()   # {"key": "logps/chosen", "max_drop_nats": 10.0, "first": -2.9, "tripped": {"step": 10, ...}}

A value that is not finite (NaN, -inf) trips the guard as well: the run is broken either way.
"""

from __future__ import annotations

import logging
import math

from transformers import TrainerCallback

logger = logging.getLogger("distill.train")


class LogpsGuard(TrainerCallback):
    """Warns (and with `stop`, ends training) once `key` falls more than `max_drop_nats` below its first logged
    value. Only the training log is watched: evaluation logs carry `eval_logps/chosen`, a different key."""

    def __init__(self, max_drop_nats: float, stop: bool = False, key: str = "logps/chosen"):
        if isinstance(max_drop_nats, bool) or not isinstance(max_drop_nats, (int, float)) or not max_drop_nats > 0:
            raise ValueError(f"max_drop_nats must be a positive number of nats, got {max_drop_nats!r}")
        self.max_drop_nats = float(max_drop_nats)
        self.stop = stop
        self.key = key
        self.first: float | None = None
        self.first_step: int | None = None
        self.last: float | None = None
        self.lowest: float | None = None
        self.tripped: dict | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or self.key not in logs:
            return control
        value = float(logs[self.key])
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
            logger.warning(
                "%s fell to %.2f at step %d, %.2f nats below its first logged value %s (step %s), more than the "
                "guard's %.1f: the chosen answers are being pushed down with the rejected ones (likelihood "
                "displacement); lower learning_rate or add an sft term (loss_type: [sigmoid, sft]). %s",
                self.key, value, step, drop, "none" if self.first is None else f"{self.first:.2f}",
                self.first_step, self.max_drop_nats, action,
            )
        if self.tripped is not None and self.stop:
            control.should_training_stop = True
        return control

    def summary(self) -> dict:
        """What run.json records: the threshold, the first, lowest and last values, and whether (and where) the
        guard tripped and stopped the run."""
        return {
            "key": self.key,
            "max_drop_nats": self.max_drop_nats,
            "stop": self.stop,
            "first": self.first,
            "first_step": self.first_step,
            "lowest": self.lowest,
            "last": self.last,
            "tripped": self.tripped,
        }
