"""The logps/chosen guard: warns, and with stop set ends training, once DPO's chosen log-probability falls more
than the threshold below where it started: measured as the chosen answers' log-ratio to the reference on the same
batch (rewards/chosen / beta) when beta is known, so batch-to-batch swings of logps/chosen do not trip it; else
logps/chosen against its first logged value. Ignores other keys; a non-number threshold is refused."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
from transformers import TrainerControl, TrainerState

from distill.callbacks import LogpsGuard


def replay(guard: LogpsGuard, logs: list[dict]) -> list[bool]:
    """Feed a training log to the guard the way the Trainer does; returns should_training_stop after each entry."""
    state, control, stops = TrainerState(), TrainerControl(), []
    for step, entry in enumerate(logs, 1):
        state.global_step = step * 5
        control = guard.on_log(None, state, control, logs=entry) or control
        stops.append(control.should_training_stop)
    return stops


# What the first GPU run logged for plain DPO after SFT (benchmarks/results/quality-2026-11-28-gpu.md): the
# chosen answers' log-probability falling from -2.9 while the margin grew.
FALLING = [{"loss": 0.69, "logps/chosen": -2.9, "rewards/margins": 0.1},
           {"loss": 0.40, "logps/chosen": -6.0, "rewards/margins": 4.0},
           {"eval_logps/chosen": -40.0},  # an evaluation log: a different key, not watched
           {"loss": 0.10, "logps/chosen": -16.9, "rewards/margins": 20.0},
           {"loss": 0.05, "logps/chosen": -30.0, "rewards/margins": 25.0}]


def test_warns_once_without_stopping_when_chosen_logps_fall_past_the_threshold(caplog):
    guard = LogpsGuard(max_drop_nats=10.0)
    with caplog.at_level(logging.WARNING, logger="distill.train"):
        stops = replay(guard, FALLING)
    assert stops == [False] * 5
    warnings = [r for r in caplog.records if "logps/chosen fell" in r.getMessage()]
    assert len(warnings) == 1 and "14.00 nats below" in warnings[0].getMessage()
    s = guard.summary()
    assert s["first"] == -2.9 and s["first_step"] == 5 and s["lowest"] == -30.0 and s["last"] == -30.0
    assert s["tripped"]["step"] == 20 and s["tripped"]["value"] == -16.9 and s["tripped"]["stopped"] is False
    assert math.isclose(s["tripped"]["drop_nats"], 14.0)


def test_stops_training_at_the_first_log_past_the_threshold():
    guard = LogpsGuard(max_drop_nats=10.0, stop=True)
    assert replay(guard, FALLING) == [False, False, False, True, True]
    assert guard.summary()["tripped"]["stopped"] is True


def test_a_drop_within_the_threshold_or_a_rising_log_never_trips():
    guard = LogpsGuard(max_drop_nats=20.0, stop=True)
    assert replay(guard, FALLING[:4]) == [False] * 4 and guard.tripped is None
    rising = LogpsGuard(max_drop_nats=0.5, stop=True)
    assert replay(rising, [{"logps/chosen": v} for v in (-3.0, -2.8, -2.0, -1.1)]) == [False] * 4


def test_a_non_finite_value_trips_the_guard():
    guard = LogpsGuard(max_drop_nats=1000.0, stop=True)
    assert replay(guard, [{"logps/chosen": -3.0}, {"logps/chosen": float("nan")}]) == [False, True]
    assert guard.tripped["drop_nats"] == math.inf


def test_sft_logs_without_the_key_are_ignored():
    guard = LogpsGuard(max_drop_nats=1.0, stop=True)
    assert replay(guard, [{"loss": 2.0}, {"loss": 9.0}]) == [False, False]
    assert guard.summary()["first"] is None and guard.tripped is None


# What TRL logged on real BFCL pairs (quality benchmark, CPU, batches of 2 pairs): logps/chosen swings with the
# batch's answer lengths while the chosen log-ratio to the reference barely moves.
NOISY_BATCHES = [{"logps/chosen": -29.9, "rewards/chosen": 0.0},
                 {"logps/chosen": -12.1, "rewards/chosen": -0.02},
                 {"logps/chosen": -45.3, "rewards/chosen": -0.05},
                 {"logps/chosen": -13.6, "rewards/chosen": 0.01}]


def test_with_beta_batch_swings_of_logps_chosen_do_not_trip_the_guard():
    guard = LogpsGuard(max_drop_nats=10.0, stop=True, beta=0.1)
    assert replay(guard, NOISY_BATCHES) == [False] * 4 and guard.tripped is None
    s = guard.summary()
    assert s["measure"] == "logratio" and s["first"] == 0.0 and math.isclose(s["lowest"], -0.5)
    assert s["logps_chosen_first"] == -29.9 and s["logps_chosen_last"] == -13.6
    # without beta the same log trips on the batch swing (-29.9 -> -45.3): what the log-ratio is for
    assert replay(LogpsGuard(max_drop_nats=10.0, stop=True), NOISY_BATCHES) == [False, False, True, True]


def test_with_beta_a_falling_log_ratio_trips_even_when_logps_chosen_rise(caplog):
    guard = LogpsGuard(max_drop_nats=10.0, stop=True, beta=0.1)
    log = [{"logps/chosen": -40.0, "rewards/chosen": 0.0},
           {"logps/chosen": -20.0, "rewards/chosen": -0.6},   # shorter answers, 6 nats below the reference
           {"logps/chosen": -25.0, "rewards/chosen": -1.3}]   # 13 nats below: collapse
    with caplog.at_level(logging.WARNING, logger="distill.train"):
        assert replay(guard, log) == [False, False, True]
    assert math.isclose(guard.tripped["drop_nats"], 13.0) and guard.tripped["step"] == 15
    assert any("relative to the reference model" in r.getMessage() for r in caplog.records)


def test_beta_must_be_positive():
    with pytest.raises(ValueError, match="beta"):
        LogpsGuard(max_drop_nats=1.0, beta=0)


@pytest.mark.parametrize("bad", ["ten", None, True, 0, -3.0, float("nan")])
def test_threshold_must_be_a_positive_number(bad):
    with pytest.raises(ValueError, match="positive number of nats"):
        LogpsGuard(max_drop_nats=bad)


# --- the real path: `distill train` on the tiny model, with a loss that pushes the chosen answers down


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory, tiny_model_dir, tiny_pairs_dir):
    from distill import cli

    root = Path(__file__).resolve().parents[1] / "recipes" / "debug"
    out = tmp_path_factory.mktemp("guard")
    local = ["--model_name_or_path", str(tiny_model_dir), "--dataset_path", str(tiny_pairs_dir), "--report_to", "none"]
    assert cli.main(["train", str(root / "tiny_cpu.yaml"), *local, "--output_dir", str(out / "sft"),
                     "--max_steps", "1"]) == 0
    # apo_down lowers the chosen answers' likelihood on purpose; one batch of every training row makes each
    # logged logps/chosen a mean over the same answers, so the fall is the training's, not the batch's
    dpo = [str(root / "tiny_cpu_dpo.yaml"), *local, "--init_adapter", str(out / "sft"), "--loss_type", "apo_down",
           "--learning_rate", "0.01", "--per_device_train_batch_size", "64", "--logging_steps", "1",
           "--max_steps", "6", "--save_steps", "6", "--logps_guard_nats", "0.001"]
    return cli, dpo, out


def test_distill_train_stops_a_dpo_run_whose_chosen_logps_fall(tiny_runs):
    cli, dpo, out = tiny_runs
    assert cli.main(["train", *dpo, "--output_dir", str(out / "stop"), "--logps_guard_stop", "true"]) == 0
    info = json.loads((out / "stop" / "run.json").read_text())
    guard = info["logps_guard"]
    assert guard["measure"] == "logratio" and guard["beta"] == info["config"]["training"]["beta"]
    assert guard["tripped"]["stopped"] is True and guard["tripped"]["drop_nats"] > 0.001
    assert info["global_step"] == guard["tripped"]["step"] < 6, "stopped at the first logged fall"
    assert (out / "stop" / "adapter_model.safetensors").is_file(), "the adapter is saved as it was"
    # a rerun does not resume into the same collapse
    before = (out / "stop" / "run.json").read_text()
    assert cli.main(["train", *dpo, "--output_dir", str(out / "stop"), "--logps_guard_stop", "true"]) == 0
    assert (out / "stop" / "run.json").read_text() == before


def test_distill_train_only_warns_by_default(tiny_runs, caplog):
    cli, dpo, out = tiny_runs
    with caplog.at_level(logging.WARNING, logger="distill.train"):
        assert cli.main(["train", *dpo, "--output_dir", str(out / "warn")]) == 0
    info = json.loads((out / "warn" / "run.json").read_text())
    assert info["global_step"] == 6 and info["logps_guard"]["tripped"]["stopped"] is False
    assert any("relative to the reference model" in r.getMessage() and " fell to " in r.getMessage()
               for r in caplog.records)
