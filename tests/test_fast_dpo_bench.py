"""benchmarks/dpo_speed.py runs in one go: its --tiny CPU mode exercises the same code path as the GPU run
(correctness check, stock and fast trainers, the JSON under $OUT and the table)."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_dpo_speed_tiny_runs_and_reports(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "dpo_speed.py"), "--tiny", "--configs", "stock,fast",
         "--steps", "2", "--warmup", "1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "dpo_speed.json").read_text())
    check = results["correctness"]
    assert check["passed"] and abs(check["fast_loss"] - check["stock_loss"]) < 1e-4
    runs = {r["config"]: r for r in results["runs"]}
    assert set(runs) == {"stock", "fast"}
    for run in runs.values():
        assert run["steps_timed"] == 2 and run["tokens_per_s"] > 0, run
    # the packed path puts more pairs into a step than the 8 of the stock batch, and computes the reference once
    assert runs["fast"]["pairs_per_step"] > 8 and runs["fast"]["ref_cache_hit"] is False and runs["fast"]["ref_s"] > 0
    table = proc.stdout[proc.stdout.rindex("\nmodel ") :]  # printed last
    assert "x stock" in table and "fast " in table and "correctness (tiny)" in table and "PASS" in table
