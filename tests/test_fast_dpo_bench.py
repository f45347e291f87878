"""benchmarks/dpo_speed.py runs in one go: its --tiny CPU mode exercises the same code path as the GPU run
(correctness check, stock and fast trainers, the JSON and Markdown results and the table), and its --student
mode's pieces (child processes measured with os.wait4, the table against stock) do what they say."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import dpo_speed  # noqa: E402


def test_dpo_speed_tiny_runs_and_reports(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "dpo_speed.py"), "--tiny", "--configs", "stock,fast",
         "--steps", "2", "--warmup", "1", "--out", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (result,) = tmp_path.glob("dpo_speed-*-tiny.json")
    results = json.loads(result.read_text())
    check = results["correctness"]
    assert check["passed"] and abs(check["fast_loss"] - check["stock_loss"]) < 1e-4
    runs = {r["config"]: r for r in results["runs"]}
    assert set(runs) == {"stock", "fast"}
    for run in runs.values():
        assert run["steps_timed"] == 2 and run["tokens_per_s"] > 0, run
    # the packed path puts more pairs into a step than the 8 of the stock batch, and computes the reference once
    assert runs["fast"]["pairs_per_step"] > 8 and runs["fast"]["ref_cache_hit"] is False and runs["fast"]["ref_s"] > 0
    table = proc.stdout[proc.stdout.rindex("| model | config") :]  # printed last
    assert "| x stock |" in table and "| fast |" in table and "correctness (tiny)" in table and "PASS" in table
    assert result.with_suffix(".md").read_text().startswith("# dpo_speed ")


def test_child_peak_rss_is_that_childs_own(tmp_path):
    """A child that holds ~300 MB reports about that, and a small one run after it does not inherit its peak
    (RUSAGE_CHILDREN would)."""
    big = [sys.executable, "-c", "b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096])"]
    small = [sys.executable, "-c", "pass"]
    code, peak_big = dpo_speed.run_child(big, tmp_path / "big.log", dict(os.environ))
    assert code == 0 and 0.29 < peak_big < 0.5
    code, peak_small = dpo_speed.run_child(small, tmp_path / "small.log", dict(os.environ))
    assert code == 0 and peak_small < 0.1
    code, _ = dpo_speed.run_child([sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "x.log", dict(os.environ))
    assert code == 3
    killed = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"  # what the OOM killer does
    code, _ = dpo_speed.run_child([sys.executable, "-c", killed], tmp_path / "k.log", dict(os.environ))
    assert code == -9


def test_child_peak_rss_is_not_the_parents(tmp_path):
    """Measured from a parent holding far more memory than the child (as a test run does): the child's peak is
    still its own (a vforked child's ru_maxrss would carry the parent's high-water mark)."""
    import torch

    held = torch.ones(400 * 2**20 // 4)  # 400 MB in this process
    code, peak = dpo_speed.run_child([sys.executable, "-c", "pass"], tmp_path / "small.log", dict(os.environ))
    assert code == 0 and peak < 0.1 and held.sum() > 0


def test_table_gives_speed_and_memory_against_stock():
    results = {"runs": [
        {"model": "m", "config": "stock", "pairs_per_step": 4, "s_per_step": 20.0, "tokens_per_s": 100.0,
         "peak_rss_gib": 12.0},
        {"model": "m", "config": "fast", "pairs_per_step": 5.5, "s_per_step": 10.0, "tokens_per_s": 250.0,
         "peak_rss_gib": 6.0, "ref_s": 30.0, "e2e_tokens_per_s": 200.0},
        {"model": "m", "config": "fast-sdpa", "error": "exit 1: Killed"},
    ]}
    lines = dpo_speed.table(results).splitlines()
    assert lines[0].startswith("| model | config |") and "peak RSS GiB" in lines[0]
    fast = next(line for line in lines if "| fast |" in line).split(" | ")
    head = lines[0].split(" | ")
    assert fast[head.index("x stock")] == "2.50" and fast[head.index("mem x stock")] == "0.50"
    assert any("fast-sdpa" in line and "Killed" in line for line in lines)


def test_student_mode_defaults_and_help():
    opts = dpo_speed.parse_args(["--student"])
    assert (opts.configs, opts.batch_size, opts.pack_tokens, opts.max_length, opts.pairs) == (
        ["stock", "fast"], 2, 3072, 2048, 24)
    assert opts.grad_accum == 2 and opts.max_minutes == 120 and dpo_speed.parse_args([]).max_minutes == 9
    assert opts.out.endswith("benchmarks/results")
    assert dpo_speed.parse_args(["--tiny"]).out is None
    with pytest.raises(SystemExit):
        dpo_speed.parse_args(["--student", "--configs", "stock,turbo"])
    text = subprocess.run([sys.executable, str(REPO / "benchmarks" / "dpo_speed.py"), "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=60).stdout
    # the one GPU command, and what it runs
    assert "python3 benchmarks/dpo_speed.py --models 1.5b --max-minutes 7" in text
    for config in ("stock-precompute", "fast-no-refcache", "fast-no-share", "fast-no-pack", "fast-sdpa"):
        assert config in text
