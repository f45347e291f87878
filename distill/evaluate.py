"""`distill eval`: answer every task with a student (or any model) and score the answers with the verifier.

    distill eval --model Qwen/Qwen2.5-0.5B-Instruct --adapter checkpoints/qwen05-dpo --tasks tasks.jsonl \\
        --out checkpoints/qwen05-dpo/eval --temperature 0
    distill eval --adapter checkpoints/qwen05-dpo --tasks tasks.jsonl --out checkpoints/qwen05-dpo/eval  # base from run.json
    distill eval --backend openai --base-url http://127.0.0.1:8000/v1 --model Qwen/Qwen2.5-72B-Instruct \\
        --tasks tasks.jsonl --out reports/teacher

The answers come from the same backends as `distill generate` (data_gen.generate), the scores from the same
verifier as `distill score` (eval.report.score_traces). The output folder holds:

    traces.jsonl      the model's answers; appended, so rerunning the same command resumes after a crash
    eval.json         what the folder evaluates (model, adapter and its weights' sha256, tasks fingerprint) and
                      the wall clock of every run; a rerun with another model, adapter or task file is refused
    report.json       the eval report of docs/tasks.md, plus `adapter_fingerprint`, `data_version` and `generation`
                      (backend, batch size, wall-clock tokens/s, traces still missing)
    verdicts.jsonl, summary.md, accuracy_by_category.png, errors.png
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

from eval.io import DistillError, fill_paragraphs, write_json

EVAL_INFO = "eval.json"
TRACES = "traces.jsonl"


def adapter_fingerprint(adapter: str | Path) -> str:
    """sha256 of the adapter's weights file: a retrained adapter at the same path is a different student."""
    folder = Path(adapter)
    for name in ("adapter_model.safetensors", "adapter_model.bin"):
        if (folder / name).is_file():
            h = hashlib.sha256()
            with open(folder / name, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            return "sha256:" + h.hexdigest()
    raise DistillError(f"{folder}: no adapter_model.safetensors (expected a LoRA adapter folder, e.g. checkpoints/<run>)")


def base_model_of(adapter: str | Path) -> str:
    """The base model an adapter was trained on (data_gen.local_models.adapter_base_model), or a DistillError."""
    from data_gen.local_models import adapter_base_model

    name = adapter_base_model(adapter)
    if not name:
        raise DistillError(f"{adapter}: neither run.json nor adapter_config.json names the base model; pass --model")
    return name


def data_version(tasks) -> str | None:
    """The tasks' `source` (e.g. 'bfcl-eval==2026.3.23'), joined when a file mixes several."""
    sources = sorted({str(t.record["source"]) for t in tasks.values() if t.record.get("source")})
    return ", ".join(sources) or None


def ran_on(backend) -> str:
    """Where a backend generates, e.g. 'cuda float32' for a local model (greedy answers can differ between devices
    and dtypes), or the backend's name for a server ('openai')."""
    device, lm = getattr(backend, "device", None), getattr(backend, "lm", None)
    if device is None or lm is None:
        return backend.name
    return f"{device} {str(getattr(lm, 'dtype', '')).removeprefix('torch.')}".strip()


def _check_folder(out: Path, identity: dict) -> dict:
    """Read out/eval.json, refusing a folder that evaluates something else (its traces would count as done)."""
    path = out / EVAL_INFO
    if not path.is_file():
        if (out / TRACES).is_file():
            raise DistillError(f"{out / TRACES} exists but {path} does not: not a `distill eval` folder; use another --out")
        return {**identity, "runs": []}
    try:
        info = json.loads(path.read_text())
    except ValueError as e:
        raise DistillError(f"{path}: not valid JSON ({e})") from None
    for key in ("model", "adapter_fingerprint", "tasks_fingerprint"):
        if info.get(key) != identity[key]:
            raise DistillError(
                f"{path}: this folder holds an evaluation with {key} {info.get(key)!r}, not {identity[key]!r} "
                f"(its traces would be reused); use another --out or remove the folder"
            )
    return {**info, **identity, "runs": info.get("runs", [])}


def evaluate(
    tasks_path: str | Path,
    backend,
    out_dir: str | Path,
    *,
    adapter: str | None = None,
    samples: int = 1,
    limit: int | None = None,
    plots: bool = True,
    progress: bool | None = None,
) -> tuple[dict, object]:
    """Generate `samples` answers per task with `backend` into out_dir/traces.jsonl (resuming what is there),
    then score them into report.json & co. Returns (report, generate Summary)."""
    from data_gen.generate import generate
    from eval.report import score_traces
    from eval.tasks import file_fingerprint, load_tasks

    out = Path(out_dir)
    tasks = load_tasks(tasks_path)
    identity = {
        "model": backend.model,
        "adapter": str(adapter) if adapter else None,
        "adapter_fingerprint": adapter_fingerprint(adapter) if adapter else None,
        "tasks": str(tasks_path),
        "tasks_fingerprint": file_fingerprint(tasks_path),
        "backend": backend.name,
        "batch_size": getattr(backend, "batch_size", None),
        "sampling": backend.sampling.to_dict(),
        "samples": samples,
    }
    info = _check_folder(out, identity)
    # eval.json goes in before the first trace: a run killed while generating leaves a folder that the next run
    # recognises and resumes, not traces with no record of what they evaluate
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / EVAL_INFO, info)
    started = time.time()
    summary = generate(tasks_path, backend, out / TRACES, samples, limit=limit, progress=progress)
    info["runs"].append({
        "started_at": round(started, 3),
        "written": summary.written,
        "already": summary.already,
        "failed": sum(summary.failed.values()),
        "completion_tokens": summary.completion_tokens,
        "wall_s": round(summary.elapsed_s, 4),
        "ran_on": ran_on(backend),
    })
    write_json(out / EVAL_INFO, info)

    # Wall-clock rate over every run that generated something: with batching, many requests share one
    # generate() call, so the per-request rate in `throughput` understates what the run achieved.
    runs = [r for r in info["runs"] if r["written"]]
    wall = sum(r["wall_s"] for r in runs)
    tokens = sum(r["completion_tokens"] for r in runs)
    generation = {
        "backend": backend.name,
        "batch_size": identity["batch_size"],
        "samples": samples,
        "sampling": identity["sampling"],
        "traces_generated": sum(r["written"] for r in runs),
        "completion_tokens": tokens,
        "wall_s": round(wall, 4),
        "completion_tokens_per_s": round(tokens / wall, 2) if wall > 0 else None,
        "runs": len(info["runs"]),
        # where the traces were generated: a folder resumed on another machine holds answers of both
        "ran_on": sorted({r.get("ran_on") or "unrecorded" for r in runs}),
        "missing": summary.missing,  # requests that failed in the last run: the report is partial until 0
    }
    extra = {
        "adapter_fingerprint": identity["adapter_fingerprint"],
        "data_version": data_version(tasks),
        "generation": generation,
    }
    reports = score_traces(tasks_path, [out / TRACES], out, model=backend.model, adapter=identity["adapter"],
                           plots=plots, extra=extra)
    return reports[backend.model], summary


def eval_cli(args: argparse.Namespace) -> int:
    from data_gen.generate import backend_config_from_args, build_backend
    from eval.tasks import file_fingerprint

    if args.adapter and not Path(args.adapter).is_dir():
        raise DistillError(f"--adapter {args.adapter}: no such adapter folder")
    if args.adapter and args.backend == "openai" and not args.model:
        raise DistillError("--backend openai: pass --model, the name the server serves the adapter under")
    model = args.model
    if not model:
        if not args.adapter:
            raise DistillError("pass --model (and --adapter for a LoRA student)")
        model = base_model_of(args.adapter)
        print(f"distill eval: base model {model} (from {args.adapter})", file=sys.stderr)
    if not Path(args.tasks).is_file():
        raise DistillError(f"{args.tasks}: no such file")
    config = backend_config_from_args(args, model=model)
    config.check()

    # Refuse a folder that evaluates something else before spending minutes loading the model.
    _check_folder(Path(args.out), {
        "model": model,
        "adapter_fingerprint": adapter_fingerprint(args.adapter) if args.adapter else None,
        "tasks_fingerprint": file_fingerprint(args.tasks),
    })
    backend = build_backend(config)
    report, summary = evaluate(args.tasks, backend, args.out, adapter=args.adapter, samples=args.samples,
                               limit=args.limit, plots=not args.no_plots, progress=not args.no_progress)
    print(summary.format(), file=sys.stderr)
    gen, tp = report["generation"], report["throughput"]
    print(
        f"{report['model']}{' + ' + report['adapter'] if report['adapter'] else ''}: accuracy {report['accuracy']:.3f}, "
        f"strict {report['strict_accuracy']:.3f}, schema-valid {report['schema_valid_rate']:.3f} over {report['n']} "
        f"traces; {gen['completion_tokens_per_s']} tokens/s wall clock, latency p50 {tp['latency_p50_s']} s, "
        f"p95 {tp['latency_p95_s']} s -> {Path(args.out) / 'report.json'}"
    )
    if summary.failed:
        print(f"distill eval: {summary.missing} requests failed: the report is partial; rerun the same command to "
              f"finish them", file=sys.stderr)
        return 1
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from data_gen.generate import add_backend_arguments

    p = subparsers.add_parser(
        "eval",
        help="answer every task with a student (base model + LoRA adapter) and score it: report.json, plots",
        description=fill_paragraphs("Generate with a model, usually a student (a base model plus a LoRA adapter loaded by peft), "
        "through the same backends as `distill generate`, and score the answers with the verifier. --out gets "
        "traces.jsonl (resumable: rerun the same command after a crash), eval.json, report.json (accuracy, strict "
        "accuracy, per category and error type, latency p50/p95, wall-clock tokens/s), verdicts.jsonl, summary.md "
        "and PNG plots. Exit status 1 when requests failed after their retries (the report is then partial)."),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""examples:
  distill eval --adapter checkpoints/qwen05-dpo --tasks tasks.jsonl --out checkpoints/qwen05-dpo/eval
  distill eval --model Qwen/Qwen2.5-0.5B-Instruct --tasks tasks.jsonl --out reports/qwen05-base --batch-size 32
  distill eval --backend vllm --model Qwen/Qwen2.5-1.5B-Instruct --adapter checkpoints/qwen15-dpo --tasks tasks.jsonl \\
      --out checkpoints/qwen15-dpo/eval
  distill eval --backend openai --base-url http://127.0.0.1:8000/v1 --model Qwen/Qwen2.5-72B-Instruct \\
      --tasks tasks.jsonl --out reports/teacher""",
    )
    p.add_argument("--tasks", required=True, help="tasks .jsonl file")
    p.add_argument("--out", required=True, help="output folder (traces, report, plots); rerun to resume")
    p.add_argument(
        "--model",
        default=None,
        help="base model: Hub id or local folder (hf, vllm), or the name the server serves (openai); default with "
        "--adapter: the base named by its run.json or adapter_config.json",
    )
    p.add_argument(
        "--adapter",
        default=None,
        help="LoRA adapter folder (a training run, checkpoints/<run>): hf loads it with peft, vllm as a LoRARequest, "
        "and its saved tokenizer (the chat template it trained with) replaces the base model's; openai: only "
        "recorded, the server must serve it as --model",
    )
    p.add_argument(
        "--backend",
        choices=["hf", "vllm", "openai"],
        default="hf",
        help="hf: transformers, batched; vllm: vLLM's offline engine; openai: an OpenAI-compatible server at "
        "--base-url (default: %(default)s)",
    )
    p.add_argument("--samples", type=int, default=1, help="answers per task (default: %(default)s)")
    p.add_argument("--limit", type=int, default=None, help="only the first N tasks of --tasks (a quick trial)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    add_backend_arguments(p)
    # An evaluation is greedy unless asked otherwise: scores should not move between two runs of one student.
    p.set_defaults(temperature=0.0)
    p.set_defaults(run=eval_cli)
