"""Training as real processes: a run killed with SIGKILL after a checkpoint resumes at that step, and
`accelerate launch --multi_gpu --num_processes 2` runs the committed tiny CPU recipe as two gloo DDP processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distill.testing.openai_stub import free_port
from distill.testing.processes import launch_retrying_exit_hang

ROOT = Path(__file__).resolve().parents[1]
SFT_RECIPE = "recipes/debug/tiny_cpu.yaml"
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONUNBUFFERED": "1",
}


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""


@pytest.mark.slow
def test_a_killed_run_resumes_at_its_last_complete_checkpoint(tmp_path, tiny_model_dir, tiny_pairs_dir):
    out, log = tmp_path / "run", tmp_path / "train.log"
    cmd = [
        sys.executable,
        "-m",
        "distill.train",
        SFT_RECIPE,
        "--model_name_or_path",
        str(tiny_model_dir),
        "--dataset_path",
        str(tiny_pairs_dir),
        "--output_dir",
        str(out),
        "--max_steps",
        "8",
        "--save_steps",
        "2",
        "--save_total_limit",
        "10",
    ]
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=f, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while not (out / "checkpoint-2" / "trainer_state.json").exists():
            assert proc.poll() is None, f"training ended before its first checkpoint:\n{_tail(log)}"
            assert time.time() < deadline, f"no checkpoint after 300 s:\n{_tail(log)}"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    steps = sorted(
        int(p.name.split("-")[1]) for p in out.glob("checkpoint-*") if (p / "trainer_state.json").is_file()
    )
    killed_at = steps[-1]
    assert killed_at < 8 and not (out / "adapter_model.safetensors").exists(), "killed before the end"
    assert json.loads((out / "run.json").read_text())["status"] == "running"
    # A checkpoint the kill cut short (no trainer_state.json yet) must not be resumed from.
    partial = out / f"checkpoint-{killed_at + 2}"
    partial.mkdir(exist_ok=True)
    (partial / "adapter_model.safetensors").write_bytes(b"torn")

    rerun = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "finished" and info["global_step"] == 8
    assert (
        info["resumed_from"] == str(out / f"checkpoint-{killed_at}") and info["resumed_at_step"] == killed_at
    )
    assert info["throughput"]["steps_run"] == 8 - killed_at, "the rerun trained only the steps left"
    state = json.loads((out / "trainer_state.json").read_text())
    assert [h["step"] for h in state["log_history"] if "loss" in h] == list(range(1, 9))
    assert f"skipping {partial}" in rerun.stderr + rerun.stdout


@pytest.mark.slow
def test_accelerate_two_process_gloo_ddp_runs_the_tiny_recipe(tmp_path):
    # The recipe as committed, with its relative fixture paths, run from a copy: datasets writes cache files
    # beside the data it maps, and tests never write into the repository.
    shutil.copytree(ROOT / "recipes" / "debug", tmp_path / "recipes" / "debug")

    def command(attempt: int) -> tuple[list[str], Path]:
        out = tmp_path / f"ddp-{attempt}"
        return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(free_port()), "-m", "distill.train", SFT_RECIPE,
                "--output_dir", str(out), "--max_steps", "3"], out

    # a launch that has not exited after 240 s (it takes about 20) is stopped with its stacks shown
    returncode, output, out = launch_retrying_exit_hang(command, cwd=tmp_path, env={**ENV, "PYTHONPATH": str(ROOT)},
                                                        timeout_s=240)
    assert returncode == 0, output[-6000:]
    info = json.loads((out / "run.json").read_text())
    assert info["hardware"]["world_size"] == 2 and info["hardware"]["distributed_type"] == "MULTI_CPU"
    assert info["status"] == "finished" and info["global_step"] == 3
    state = json.loads((out / "trainer_state.json").read_text())
    # 24 train rows, 4 per process per step, 2 processes: 3 steps are one epoch
    assert state["log_history"][-1]["epoch"] == pytest.approx(1.0)
    assert (out / "adapter_model.safetensors").is_file() and (out / "tokenizer.json").is_file()
