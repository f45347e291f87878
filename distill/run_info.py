"""run.json: how a checkpoint was made, written into checkpoints/<run>/ when training starts and again when it ends.

    {"status": "finished", "stage": "dpo", "recipe": "recipes/qwen2.5-0.5b-instruct/dpo.yaml",
     "recipe_sha256": "...", "command": ["distill", "train", ...],
     "config": {"script": {...}, "training": {...}, "model": {...}},     # resolved: file + flags + defaults
     "git": {"sha": "6aaf167...", "dirty": false},
     "dataset": {"path": "data/pairs", "fingerprints": {"train": "..."}, "rows": {"train": 900},
                 "teacher_model": "Qwen/Qwen2.5-72B-Instruct", "teacher_model_from": "data/pairs/README.md"},
     "init_adapter": null, "resumed_from": null, "audit": {...}, "libraries": {"trl": "1.16.0", ...},
     "hardware": {"device": "cuda", "gpus": ["NVIDIA H100 80GB HBM3"], "world_size": 1, ...},
     "throughput": {"steps_timed": 18, "median_step_s": 0.56, "tokens_per_s": 15315, "peak_gpu_mem_gib": 3.96},
     "metrics": {"train_loss": 0.41, ...}, "started_at": "...", "finished_at": "..."}

Secrets never reach the file: secret-named fields and flags (hub_token, `--hub_token X` in the command and
overrides) are stored as `<redacted>`, values shaped like tokens too, and recipe `env:` values are left out.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml

from eval.io import write_json
from eval.secrets import redact_argv, redact_mapping, register_secret

LIBRARIES = ("distill", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes")
REPO_ROOT = Path(__file__).resolve().parents[1]


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def jsonable(value):
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)  # torch.dtype, Path, configs


def config_dict(obj) -> dict:
    """A dataclass's fields as JSON values, secrets masked (secret-named fields such as hub_token, and any value
    that is a known secret or shaped like a token)."""
    return redact_mapping({f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)})


def keep_hub_token_out_of_checkpoints(training_args) -> None:
    """Move `hub_token` from the training arguments into this process's HF_TOKEN.

    transformers pickles the whole TrainingArguments into every checkpoint's training_args.bin, hub_token included,
    and those files get copied and uploaded; huggingface_hub reads HF_TOKEN by itself whenever the Trainer creates
    or pushes to a repository with no explicit token, so the token still works and no file holds it."""
    token = getattr(training_args, "hub_token", None)
    if token:
        register_secret(token)
        os.environ["HF_TOKEN"] = token
        training_args.hub_token = None


def git_info(root: Path = REPO_ROOT) -> dict | None:
    """The commit distill ran from, and whether the tree had uncommitted changes to tracked files."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None  # installed from a wheel, or no git
    return {"sha": sha, "dirty": bool(dirty)}


def library_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def hardware(training_args=None) -> dict:
    import torch

    info = {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": "cpu",
        "gpus": [],
        "cuda": torch.version.cuda,
    }
    use_cpu = bool(getattr(training_args, "use_cpu", False))
    if torch.cuda.is_available() and not use_cpu:
        info["device"] = "cuda"
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    if training_args is not None:
        info["world_size"] = training_args.world_size
        info["distributed_type"] = jsonable(training_args.distributed_state.distributed_type)
    return info


def teacher_model(dataset_path: str, data=None) -> tuple[str | None, str | None]:
    """The teacher named by the dataset, and where: `distill pairs`' pairs_stats.json (teacher.models), then the
    dataset card README.md (a `teacher_model:`/`teacher:` key in its YAML header, or a 'Teacher: X' line), each
    looked for in dataset_path and the folder above it (`distill pairs` puts the dataset in OUT/dataset), then
    the same keys in the dataset's info.description as JSON."""
    path = Path(dataset_path)
    folders = [path, path.parent] if path.name == "dataset" else [path]
    for folder in folders:
        stats = folder / "pairs_stats.json"
        if stats.is_file():
            try:
                models = json.loads(stats.read_text()).get("teacher", {}).get("models", {})
            except (ValueError, AttributeError):
                models = {}
            if models:
                return ", ".join(models), str(stats)
    for folder in folders:
        card = folder / "README.md"
        if not card.is_file():
            continue
        text = card.read_text(encoding="utf-8", errors="replace")
        m = re.match(r"^---\n(.*?)\n---", text, re.S)
        try:
            header = yaml.safe_load(m.group(1)) if m else {}
        except yaml.YAMLError:
            header = {}
        for key in ("teacher_model", "teacher"):
            if isinstance(header, dict) and isinstance(header.get(key), str):
                return header[key], str(card)
        m = re.search(r"teacher(?:[ _]model)?\**\s*[:|]\s*`?([\w./:-]+)`?", text, re.I)
        if m:
            return m.group(1), str(card)
    for split in (data or {}).values():
        try:
            meta = json.loads(split.info.description or "")
        except ValueError:
            continue
        for key in ("teacher_model", "teacher"):
            if isinstance(meta, dict) and isinstance(meta.get(key), str):
                return meta[key], "dataset info.description"
    return None, None


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def start_info(recipe, data, *, audit: dict, resumed_from: str | None) -> dict:
    teacher, teacher_from = teacher_model(recipe.script.dataset_path, data)
    env_keys = sorted((yaml.safe_load(recipe.path.read_text()) or {}).get("env", {}) or {})
    return {
        "status": "running",
        "stage": recipe.script.stage,
        "recipe": str(recipe.path),
        "recipe_sha256": file_sha256(recipe.path),
        "overrides": redact_argv(recipe.overrides),  # `--hub_token X` is stored as `--hub_token <redacted>`
        "command": redact_argv(sys.argv),
        "env_keys_from_recipe": env_keys,  # names only: values may be secrets
        "config": {
            "script": config_dict(recipe.script),
            "training": config_dict(recipe.training),
            "model": config_dict(recipe.model),
        },
        "git": git_info(),
        "dataset": {
            "path": recipe.script.dataset_path,
            "fingerprints": {name: split._fingerprint for name, split in data.items()},
            "rows": {name: split.num_rows for name, split in data.items()},
            "teacher_model": teacher,
            "teacher_model_from": teacher_from,
        },
        "init_adapter": recipe.script.init_adapter,
        "resumed_from": resumed_from,
        "audit": audit,
        "libraries": library_versions(),
        "hardware": hardware(recipe.training),
        "started_at": now(),
    }


def write_run_info(output_dir: str | Path, info: dict) -> Path:
    path = Path(output_dir) / "run.json"
    write_json(path, jsonable(info))
    return path


def _callback_base():
    from transformers import TrainerCallback

    return TrainerCallback


class ThroughputCallback(_callback_base()):
    """Step times, tokens per second and peak GPU memory of a run, for run.json and benchmarks/train_gpu.py.
    The first `skip` steps (compilation, allocator warm-up, DPO's reference pass) are left out of the rates."""

    def __init__(self, skip: int = 2):
        self.skip = skip
        self.step_times: list[float] = []
        self.tokens: list[tuple[int, float, float]] = []  # (step, time, cumulative num_tokens)
        self._t0 = None

    def on_train_begin(self, args, state, control, **kwargs):
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def on_step_begin(self, args, state, control, **kwargs):
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._t0 is not None:
            self.step_times.append(time.perf_counter() - self._t0)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "num_tokens" in logs:
            self.tokens.append((state.global_step, time.perf_counter(), float(logs["num_tokens"])))

    def summary(self) -> dict:
        import torch

        timed = self.step_times[self.skip :] or self.step_times
        out = {
            "steps_run": len(self.step_times),
            "steps_timed": len(timed),
            "median_step_s": round(statistics.median(timed), 4) if timed else None,
            "tokens_per_s": None,
            "peak_gpu_mem_gib": None,
        }
        # num_tokens is cumulative over the run (this process's non-padding tokens times the world size);
        # the rate between the first logged step after warm-up and the last leaves warm-up out.
        after = [t for t in self.tokens if t[0] > self.skip] or self.tokens
        if len(after) >= 2 and after[-1][1] > after[0][1]:
            out["tokens_per_s"] = round((after[-1][2] - after[0][2]) / (after[-1][1] - after[0][1]), 1)
        if torch.cuda.is_available():
            out["peak_gpu_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        return out
