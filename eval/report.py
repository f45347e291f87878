"""Score traces: verify each against its task, aggregate, and write report.json, verdicts.jsonl, summary.md, plots.

    report.json  {"model": "m", "adapter": null, "tasks": "tasks.jsonl", "tasks_fingerprint": "sha256:...",
                  "n": 120, "accuracy": 0.61, "strict_accuracy": 0.58, "format_valid_rate": 0.97,
                  "schema_valid_rate": 0.9, "by_category": {"simple_python": {"n": 40, "accuracy": 0.7,
                  "strict_accuracy": 0.68}}, "errors": {"ok": 73, "wrong_value": 20, ...}, "throughput": {...}}

`score_traces` is the Python API; `distill score` is a thin layer over it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

from eval.io import DistillError, atomic_folder, atomic_write, percentile, read_jsonl
from eval.tasks import Task, file_fingerprint, load_tasks
from eval.verify import ERRORS, OK, verify

# Keys a trace may carry besides the model's output, with the JSON types they must have. The output itself (`raw`,
# `tool_calls`) is the model's and any value of it gets a verdict; these are written by `distill generate` and
# a wrong type means the file is not what it claims to be.
_TRACE_KEYS = {
    "task_id": ((str,), "a string"),
    "model": ((str,), "a string"),
    "sample": ((int,), "an integer"),
    "prompt_tokens": ((int, type(None)), "an integer or null"),
    "completion_tokens": ((int, type(None)), "an integer or null"),
    "latency_s": ((int, float, type(None)), "a number or null"),
    "finish_reason": ((str, type(None)), "a string or null"),
}


def check_trace(trace: dict, where: str) -> None:
    """Raise a DistillError naming `where` and the key when a trace lacks task_id/model or has a key of the wrong
    type (a list task_id, a dict model, token counts as strings)."""
    for key in ("task_id", "model"):
        if key not in trace:
            raise DistillError(f"{where}: trace has no {key!r}")
    for key, (types, what) in _TRACE_KEYS.items():
        value = trace.get(key)
        if key in trace and (not isinstance(value, types) or isinstance(value, bool)):
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            raise DistillError(f"{where}: key {key!r} must be {what}, got {type(value).__name__} {shown}")


def read_traces(paths: list[str | os.PathLike], tasks: dict[str, Task]) -> list[tuple[str, int, dict]]:
    """(file, line, trace) for every trace; unknown tasks, missing keys, keys of the wrong type, duplicates and a
    cut-off last line (a `distill generate` killed or still running) are errors naming the line."""
    out = []
    seen: dict[tuple, str] = {}
    for path in paths:
        for lineno, trace in read_jsonl(path):
            where = f"{path}:{lineno}"
            check_trace(trace, where)
            if trace["task_id"] not in tasks:
                raise DistillError(f"{where}: trace for unknown task {trace['task_id']!r} (not in the tasks file)")
            if "raw" not in trace and "tool_calls" not in trace:
                raise DistillError(f"{where}: trace has neither 'raw' nor 'tool_calls'")
            key = (trace["task_id"], trace["model"], trace.get("sample", 0))
            if key in seen:
                raise DistillError(f"{where}: duplicate trace {key} (first at {seen[key]})")
            seen[key] = where
            out.append((str(path), lineno, trace))
    if not out:
        raise DistillError(f"no traces in {', '.join(map(str, paths))}")
    return out


def _rate(k: int, n: int) -> float:
    return round(k / n, 6) if n else 0.0


def throughput(traces: list[dict]) -> dict:
    lat = [t["latency_s"] for t in traces if isinstance(t.get("latency_s"), (int, float))]
    toks = sum(t.get("completion_tokens") or 0 for t in traces if isinstance(t.get("latency_s"), (int, float)))
    p50, p95 = percentile(lat, 0.5), percentile(lat, 0.95)
    return {
        "traces_timed": len(lat),
        "latency_p50_s": round(p50, 4) if p50 is not None else None,
        "latency_p95_s": round(p95, 4) if p95 is not None else None,
        "completion_tokens": toks,
        # per-request tokens/s summed over requests; with concurrent requests, wall-clock throughput is higher
        "completion_tokens_per_s": round(toks / sum(lat), 2) if lat and sum(lat) > 0 else None,
    }


def aggregate(verdicts: list[dict]) -> dict:
    n = len(verdicts)
    by_cat: dict[str, list[dict]] = defaultdict(list)
    for v in verdicts:
        by_cat[v["category"]].append(v)
    errors = Counter(v["error"] for v in verdicts)
    return {
        "n": n,
        "tasks_scored": len({v["task_id"] for v in verdicts}),
        "accuracy": _rate(sum(v["correct"] for v in verdicts), n),
        "strict_accuracy": _rate(sum(v["correct"] and v["schema_valid"] for v in verdicts), n),
        "format_valid_rate": _rate(sum(v["format_valid"] for v in verdicts), n),
        "schema_valid_rate": _rate(sum(v["schema_valid"] for v in verdicts), n),
        "by_category": {
            cat: {
                "n": len(vs),
                "accuracy": _rate(sum(v["correct"] for v in vs), len(vs)),
                "strict_accuracy": _rate(sum(v["correct"] and v["schema_valid"] for v in vs), len(vs)),
                # per category too: fleet admission sets a floor on it for each category it admits
                "schema_valid_rate": _rate(sum(v["schema_valid"] for v in vs), len(vs)),
            }
            for cat, vs in sorted(by_cat.items())
        },
        "errors": {e: errors.get(e, 0) for e in (OK, *ERRORS)},
    }


def summary_markdown(report: dict) -> str:
    pct = lambda x: f"{100 * x:.1f}%"  # noqa: E731
    lines = [
        f"# Evaluation: {report['model']}" + (f" + {report['adapter']}" if report.get("adapter") else ""),
        "",
        f"Tasks: `{report['tasks']}` ({report['tasks_fingerprint']}), {report['n']} traces over "
        f"{report['tasks_scored']} tasks.",
        "",
        "| metric | value |",
        "| --- | --- |",
        f"| accuracy (BFCL rules) | {pct(report['accuracy'])} |",
        f"| strict accuracy (correct and schema-valid) | {pct(report['strict_accuracy'])} |",
        f"| format-valid rate | {pct(report['format_valid_rate'])} |",
        f"| schema-valid rate | {pct(report['schema_valid_rate'])} |",
        "",
        "## By category",
        "",
        "| category | n | accuracy | strict accuracy | schema-valid |",
        "| --- | --- | --- | --- | --- |",
    ]
    for cat, c in report["by_category"].items():
        sv = pct(c["schema_valid_rate"]) if "schema_valid_rate" in c else "-"
        lines.append(f"| {cat} | {c['n']} | {pct(c['accuracy'])} | {pct(c['strict_accuracy'])} | {sv} |")
    lines += ["", "## Error mix", "", "| error | count | share |", "| --- | --- | --- |"]
    for err, k in report["errors"].items():
        if k:
            lines.append(f"| {err} | {k} | {pct(k / report['n'])} |")
    tp = report.get("throughput") or {}
    if tp.get("traces_timed"):
        lines += [
            "",
            "## Throughput",
            "",
            f"Latency p50 {tp['latency_p50_s']} s, p95 {tp['latency_p95_s']} s over {tp['traces_timed']} requests; "
            f"{tp['completion_tokens']} completion tokens, {tp['completion_tokens_per_s']} tokens/s per request.",
        ]
    gen = report.get("generation") or {}
    if gen.get("wall_s"):  # written by `distill eval`: the rate the whole (batched) run achieved
        lines.append(
            f"Generation wall clock: {gen['completion_tokens']} completion tokens in {gen['wall_s']} s, "
            f"{gen['completion_tokens_per_s']} tokens/s ({gen['backend']} backend"
            + (f", batch size {gen['batch_size']}" if gen.get("batch_size") else "")
            + (f", on {' and '.join(gen['ran_on'])}" if gen.get("ran_on") else "")
            + ")."
        )
    return "\n".join(lines) + "\n"


def render_plots(report: dict) -> dict[str, bytes]:
    """accuracy_by_category.png and errors.png as PNG bytes; matplotlib is imported only here."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pngs = {}
    cats = list(report["by_category"])
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(cats) + 2), 4))
    xs = range(len(cats))
    ax.bar([x - 0.2 for x in xs], [report["by_category"][c]["accuracy"] for c in cats], 0.4, label="accuracy")
    ax.bar([x + 0.2 for x in xs], [report["by_category"][c]["strict_accuracy"] for c in cats], 0.4, label="strict")
    ax.set_xticks(list(xs), cats, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of traces")
    ax.set_title(f"Accuracy by category: {report['model']}")
    ax.legend()
    fig.tight_layout()
    pngs["accuracy_by_category.png"] = _png(fig)
    plt.close(fig)

    errs = {e: k for e, k in report["errors"].items() if k}
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.barh(list(errs), list(errs.values()), color=["tab:green" if e == OK else "tab:red" for e in errs])
    ax.invert_yaxis()
    ax.set_xlabel("traces")
    ax.set_title("Error mix")
    fig.tight_layout()
    pngs["errors.png"] = _png(fig)
    plt.close(fig)
    return pngs


def write_plots(report: dict, out_dir: Path) -> list[Path]:
    """The plots of `render_plots`, each written atomically into out_dir."""
    paths = []
    for name, data in render_plots(report).items():
        with atomic_write(Path(out_dir) / name, "wb") as f:
            f.write(data)
        paths.append(Path(out_dir) / name)
    return paths


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def write_all(out_dir: str | os.PathLike, files: dict[str, str | bytes]) -> None:
    """Write every file (paths relative to out_dir) or none of them: a failure part-way (a full disk) leaves
    out_dir as it was. Each file is written and synced in a staging folder first, and only when all are there are
    they renamed into place (renames within one file system need no space). A missing out_dir is built whole
    beside it and renamed in; an existing one keeps the files this call does not write (`distill eval` keeps its
    traces there)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DistillError(f"{out_dir}: exists and is not a folder")
    for rel in files:  # a folder where a file goes (or a file where a folder goes) would fail half-way through
        target = out_dir / rel
        if target.is_dir():
            raise DistillError(f"{target}: is a folder; a file is written there")
        for parent in target.parents:
            if parent == out_dir:
                break
            if parent.exists() and not parent.is_dir():
                raise DistillError(f"{parent}: exists and is not a folder")
    if not out_dir.exists():
        with atomic_folder(out_dir) as tmp:
            _stage(tmp, files)
        return
    try:
        stage = Path(tempfile.mkdtemp(prefix=".staging.", suffix=".tmp", dir=out_dir))
    except OSError as e:
        raise DistillError(f"{out_dir}: cannot write it: {e.strerror or e}") from None
    try:
        _stage(stage, files)
        for rel in files:
            (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(stage / rel, out_dir / rel)
    except OSError as e:
        raise DistillError(f"{out_dir}: cannot write it: {e.strerror or e}") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _stage(folder: Path, files: dict[str, str | bytes]) -> None:
    for rel, content in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            f.write(content if isinstance(content, bytes) else content.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())


def score_traces(
    tasks_path: str | os.PathLike,
    trace_paths: list[str | os.PathLike],
    out_dir: str | os.PathLike,
    model: str | None = None,
    adapter: str | None = None,
    plots: bool = True,
    extra: dict | None = None,
) -> dict[str, dict]:
    """Verify traces and write one report folder per model: out_dir itself when there is one model (or `model`
    is given), out_dir/<model> otherwise. `extra` keys are added to every report (`distill eval` records how
    the traces were generated). Returns {model: report}."""
    tasks = load_tasks(tasks_path)
    rows = read_traces(trace_paths, tasks)
    by_model: dict[str, list[dict]] = defaultdict(list)
    for _, _, trace in rows:
        if model is None or trace["model"] == model:
            by_model[trace["model"]].append(trace)
    if not by_model:
        raise DistillError(f"no traces of model {model!r} in {', '.join(map(str, trace_paths))}")
    out_dir = Path(out_dir)
    fingerprint = file_fingerprint(tasks_path)
    folders: dict[str, str] = {}  # model -> folder relative to out_dir ("" for out_dir itself)
    for name in by_model:
        folders[name] = "" if len(by_model) == 1 else _safe(name)
        clash = next((other for other, f in folders.items() if f == folders[name] and other != name), None)
        if clash is not None:
            raise DistillError(f"models {clash!r} and {name!r} would share the report folder {out_dir / folders[name]}; "
                               f"score them one at a time with --model and different --out")
    # Everything is computed before anything is written, and written all at once: a failure on the second model
    # cannot leave the first one's report behind.
    reports, files = {}, {}
    for name, traces in by_model.items():
        verdicts = [verify(tasks[t["task_id"]], t) for t in traces]
        report = {
            "model": name,
            "adapter": adapter,
            "tasks": str(tasks_path),
            "tasks_fingerprint": fingerprint,
            **aggregate(verdicts),
            "throughput": throughput(traces),
            **(extra or {}),
        }
        prefix = f"{folders[name]}/" if folders[name] else ""
        files[prefix + "verdicts.jsonl"] = "".join(json.dumps(v, ensure_ascii=False) + "\n" for v in verdicts)
        files[prefix + "report.json"] = json.dumps(report, indent=2, ensure_ascii=False) + "\n"
        files[prefix + "summary.md"] = summary_markdown(report)
        if plots:
            files.update({prefix + n: png for n, png in render_plots(report).items()})
        reports[name] = report
    write_all(out_dir, files)
    return reports


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"


def score_cli(args) -> int:
    reports = score_traces(args.tasks, args.traces, args.out, model=args.model, plots=not args.no_plots)
    for name, r in reports.items():
        where = Path(args.out) if len(reports) == 1 else Path(args.out) / _safe(name)
        print(
            f"{name}: accuracy {r['accuracy']:.3f}, strict {r['strict_accuracy']:.3f}, "
            f"schema-valid {r['schema_valid_rate']:.3f} over {r['n']} traces -> {where}/report.json"
        )
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "score",
        help="verify traces against their tasks and write report.json, verdicts.jsonl, summary.md",
        description="Verify every trace (parse the output, validate arguments against the tool's JSON Schema, "
        "match the expected calls with BFCL's AST rules) and write report.json, verdicts.jsonl and summary.md "
        "into --out.",
    )
    p.add_argument("--tasks", required=True, help="tasks .jsonl file")
    p.add_argument("--traces", required=True, nargs="+", help="one or more traces .jsonl files")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--model",
        default=None,
        help="score only traces of this model (default: all; a file with several models is scored per model "
        "in one report each under --out/<model>)",
    )
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots (accuracy by category, error mix)")
    p.set_defaults(run=score_cli)
