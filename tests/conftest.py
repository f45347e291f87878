import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny Llama model + tokenizer with a tool-calling chat template, built once per test session."""
    from distill.testing.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def tiny_pairs_dir(tmp_path_factory):
    """A small preference dataset in distill's format (save_to_disk, train/test, README.md card naming a teacher)."""
    from distill.testing.tiny_pairs import build_tiny_pairs

    return build_tiny_pairs(tmp_path_factory.mktemp("tiny_pairs") / "pairs")


@pytest.fixture(scope="session")
def tiny_adapter_dir(tiny_model_dir, tmp_path_factory):
    """A training-run-shaped folder for the tiny model: a LoRA adapter whose weights are random (not peft's
    no-op init, so it changes the model's answers), the tokenizer, a run.json with the keys distill.train
    writes, and the files a run leaves that are not for publishing (TRL's template card, training_args.bin)."""
    import json
    import shutil

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    run = tmp_path_factory.mktemp("checkpoints") / "tiny-sft"
    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False,
                      task_type="CAUSAL_LM")
    model = get_peft_model(base, lora)
    with torch.no_grad():  # large enough to change greedy answers of the tiny model
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.5)
    model.save_pretrained(run)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
        if (tiny_model_dir / name).is_file():
            shutil.copy(tiny_model_dir / name, run / name)
    (run / "run.json").write_text(json.dumps({
        "status": "finished", "stage": "sft", "recipe": "recipes/debug/tiny_cpu.yaml",
        "config": {"script": {"stage": "sft", "dataset_path": "recipes/debug/tiny/pairs"}, "training": {},
                   "model": {"model_name_or_path": str(tiny_model_dir), "load_in_4bit": True}},
        "git": {"sha": "0" * 40, "dirty": False},
        "dataset": {"path": "recipes/debug/tiny/pairs", "rows": {"train": 24, "test": 8},
                    "teacher_model": "Qwen/Qwen2.5-72B-Instruct"},
        "libraries": {"torch": torch.__version__}, "global_step": 8, "metrics": {"train_loss": 1.0},
    }))
    (run / "README.md").write_text("---\nlibrary_name: peft\n---\n# Model Card for Model ID\n")
    (run / "training_args.bin").write_bytes(b"\x80\x04pickle")
    return run


@pytest.fixture(scope="session")
def installed_wheel(tmp_path_factory) -> Path:
    """The project built into a wheel and installed (not editable, no dependencies: the test venv has them) into
    a folder of its own; PYTHONPATH=<that folder> makes it the `distill` a child process imports."""
    work = tmp_path_factory.mktemp("wheel")
    # Built from a copy: setuptools builds inside the source tree (build/), which must stay clean, and a stale
    # build/ folder would leak old files into the wheel.
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "runs", "checkpoints", "*.egg-info", "__pycache__", ".pytest_cache",
        ".hypothesis", ".whl", ".site"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(work / "dist"), str(source)], check=True, capture_output=True, cwd=work)
    (wheel,) = (work / "dist").glob("distill-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target",
                    str(work / "site"), str(wheel)], check=True, capture_output=True, cwd=work)
    return wheel


def wheel_env(wheel: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(wheel.parent.parent / "site"), "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1"}


# Tests never write into the repository: the working tree's `git status` must be the same after the suite as
# before it (a developer's own uncommitted changes are fine; new or changed files from a test are not).
_ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def _git_status() -> set[str] | None:
    import subprocess

    if not (_ROOT / ".git").exists():
        return None
    r = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=_ROOT, capture_output=True,
                       text=True)
    # Ignored files count under recipes/: the committed fixtures must stay as committed (a `datasets` map over
    # them leaves cache-*.arrow files, which .gitignore hides from a plain status).
    fixtures = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all", "recipes"],
                              cwd=_ROOT, capture_output=True, text=True)
    if r.returncode or fixtures.returncode:
        return None
    return set(r.stdout.splitlines()) | set(fixtures.stdout.splitlines())


def pytest_sessionstart(session):
    # On where CI asks for it (.ci/run): on a shared working tree, other people's edits during a run would count.
    check = os.environ.get("DISTILL_CHECK_CLEAN_TREE") == "1"
    session.config._git_status_before = _git_status() if check else None


def pytest_sessionfinish(session, exitstatus):
    before, after = session.config._git_status_before, _git_status()
    if before is None or after is None or session.config.option.collectonly:
        return
    new = sorted(after - before)
    if new:
        print("\nthe test suite wrote into the repository (tests must use tmp_path):\n  " + "\n  ".join(new[:20]))
        session.exitstatus = 1
