"""Eval reports side by side: the teacher and its students, per category and per error type.

    distill compare reports/teacher checkpoints/qwen05-dpo/eval checkpoints/qwen15-dpo/eval --out reports/compare

Each REPORT is a report.json or the folder holding one (`distill eval`, `distill score`). The first is the
reference, usually the teacher: the other columns show their gap to it in percentage points. Reports over
different task files are refused (their numbers do not compare) unless --allow-different-tasks. Writes
compare.md, compare.json (the same numbers) and compare.png (grouped bars: accuracy per category, error mix).
Pure Python; matplotlib is imported only to draw.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from eval.io import DistillError, atomic_write, fill_paragraphs, write_json
from eval.verify import ERRORS, OK

REQUIRED = ("model", "n", "accuracy", "strict_accuracy", "by_category", "errors", "tasks_fingerprint")


def load_report(path: str | os.PathLike) -> tuple[Path, dict]:
    """(path of report.json, report); a folder means its report.json. Missing keys are errors naming the file."""
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DistillError(f"{path}: no such report (run `distill eval` or `distill score` first)") from None
    except ValueError as e:
        raise DistillError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(report, dict):
        raise DistillError(f"{path}: not an eval report (expected a JSON object)")
    for key in REQUIRED:
        if key not in report:
            raise DistillError(f"{path}: not an eval report: no {key!r}")
    if not isinstance(report["by_category"], dict) or not isinstance(report["errors"], dict):
        raise DistillError(f"{path}: 'by_category' and 'errors' must be objects")
    return path, report


def default_label(report: dict) -> str:
    """The adapter's folder name for a student (checkpoints/<run> -> run), else the model's name."""
    if report.get("adapter"):
        return Path(str(report["adapter"]).rstrip("/")).name
    return str(report["model"])


def _unique(labels: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} #{seen[label]}")
    return out


def compare(paths: list[str | os.PathLike], labels: list[str] | None = None, allow_different_tasks: bool = False) -> dict:
    """The comparison table as data: columns in the order given, the first being the reference."""
    if len(paths) < 2:
        raise DistillError("give at least two reports (the reference first, e.g. the teacher)")
    loaded = [load_report(p) for p in paths]
    if labels is not None and len(labels) != len(loaded):
        raise DistillError(f"--labels names {len(labels)} columns for {len(loaded)} reports")
    labels = _unique(labels or [default_label(r) for _, r in loaded])
    fingerprints = {r["tasks_fingerprint"] for _, r in loaded}
    if len(fingerprints) > 1 and not allow_different_tasks:
        detail = "; ".join(f"{p}: {r.get('tasks')} ({r['tasks_fingerprint'][:19]}...)" for p, r in loaded)
        raise DistillError(f"the reports score different task files, so their numbers do not compare: {detail} "
                           f"(--allow-different-tasks to compare anyway)")
    cats = sorted({c for _, r in loaded for c in r["by_category"]})
    errors = [e for e in (OK, *ERRORS) if any(r["errors"].get(e) for _, r in loaded)]

    def cat_value(r, cat, key):
        c = r["by_category"].get(cat)
        return None if c is None else c.get(key)

    columns = []
    for (path, r), label in zip(loaded, labels, strict=True):
        gen = r.get("generation") or {}
        tp = r.get("throughput") or {}
        columns.append({
            "label": label,
            "report": str(path),
            "model": r["model"],
            "adapter": r.get("adapter"),
            "tasks": r.get("tasks"),
            "tasks_fingerprint": r["tasks_fingerprint"],
            "n": r["n"],
            "overall": {k: r.get(k) for k in ("accuracy", "strict_accuracy", "schema_valid_rate", "format_valid_rate")},
            "by_category": {
                cat: {k: cat_value(r, cat, k) for k in ("n", "accuracy", "strict_accuracy")} for cat in cats
            },
            "errors": {e: {"count": r["errors"].get(e, 0), "share": round(r["errors"].get(e, 0) / r["n"], 6) if r["n"] else 0.0}
                       for e in errors},
            "tokens_per_s_wall": gen.get("completion_tokens_per_s"),
            "latency_p50_s": tp.get("latency_p50_s"),
            "latency_p95_s": tp.get("latency_p95_s"),
        })
    return {"reference": labels[0], "categories": cats, "errors": errors, "same_tasks": len(fingerprints) == 1,
            "columns": columns}


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _gap(x, ref) -> str:
    """A value with its gap to the reference in percentage points."""
    if x is None:
        return "-"
    if ref is None:
        return _pct(x)
    return f"{_pct(x)} ({100 * (x - ref):+.1f})"


def markdown(table: dict) -> str:
    cols = table["columns"]
    ref = cols[0]
    head = "| | " + " | ".join(c["label"] for c in cols) + " |"
    rule = "| --- |" + " --- |" * len(cols)
    lines = [
        "# Comparison",
        "",
        f"Reference: **{ref['label']}** (`{ref['report']}`); other columns show their gap to it in percentage points.",
        "",
        "| column | model | adapter | report |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {c['label']} | `{c['model']}` | {('`' + str(c['adapter']) + '`') if c['adapter'] else '-'} | `{c['report']}` |"
              for c in cols]
    lines.append("")
    if table["same_tasks"]:
        lines.append(f"Tasks: `{ref['tasks']}` ({ref['tasks_fingerprint']}).")
    else:
        lines.append("**Warning: the reports score different task files; their numbers do not compare directly.**")
    lines += ["", "## Overall", "", head, rule, "| traces | " + " | ".join(str(c["n"]) for c in cols) + " |"]
    for key, name in (("accuracy", "accuracy"), ("strict_accuracy", "strict accuracy"),
                      ("schema_valid_rate", "schema-valid"), ("format_valid_rate", "format-valid")):
        cells = [_pct(ref["overall"][key])] + [_gap(c["overall"][key], ref["overall"][key]) for c in cols[1:]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    fmt = lambda v: "-" if v is None else str(v)  # noqa: E731
    lines.append("| tokens/s (wall clock) | " + " | ".join(fmt(c["tokens_per_s_wall"]) for c in cols) + " |")
    lines.append("| latency p50 / p95 (s) | " + " | ".join(f"{fmt(c['latency_p50_s'])} / {fmt(c['latency_p95_s'])}" for c in cols) + " |")
    for key, title in (("accuracy", "Accuracy by category"), ("strict_accuracy", "Strict accuracy by category")):
        lines += ["", f"## {title}", "", "| category | n | " + " | ".join(c["label"] for c in cols) + " |",
                  "| --- | --- |" + " --- |" * len(cols)]
        for cat in table["categories"]:
            r = ref["by_category"][cat][key]
            cells = [_pct(r)] + [_gap(c["by_category"][cat][key], r) for c in cols[1:]]
            n = "/".join(sorted({str(c["by_category"][cat]["n"]) for c in cols if c["by_category"][cat]["n"] is not None}))
            lines.append(f"| {cat} | {n} | " + " | ".join(cells) + " |")
    lines += ["", "## Error mix (share of traces, count)", "", "| error | " + " | ".join(c["label"] for c in cols) + " |",
              "| --- |" + " --- |" * len(cols)]
    for err in table["errors"]:
        lines.append(f"| {err} | " + " | ".join(f"{_pct(c['errors'][err]['share'])} ({c['errors'][err]['count']})" for c in cols) + " |")
    return "\n".join(lines) + "\n"


def plot(table: dict, path: Path) -> Path:
    """compare.png: accuracy per category (top) and the error mix (bottom), one bar per report in each group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols, cats = table["columns"], table["categories"]
    errs = [e for e in table["errors"] if e != OK]
    k = len(cols)
    width = 0.8 / k
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(7, 1.1 * max(len(cats), len(errs)) * max(1, k / 2) + 2), 8))
    for i, c in enumerate(cols):
        offset = (i - (k - 1) / 2) * width
        top.bar([x + offset for x in range(len(cats))], [c["by_category"][cat]["accuracy"] or 0 for cat in cats],
                width, label=c["label"])
        bottom.bar([x + offset for x in range(len(errs))], [c["errors"][e]["share"] for e in errs], width, label=c["label"])
    top.set_xticks(range(len(cats)), cats, rotation=20, ha="right")
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.set_title("Accuracy by category")
    top.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: never over a bar
    bottom.set_xticks(range(len(errs)), errs, rotation=20, ha="right")
    bottom.set_ylabel("share of traces")
    bottom.set_title("Errors by type")
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return path


def compare_cli(args) -> int:
    labels = [s.strip() for s in args.labels.split(",")] if args.labels else None
    table = compare(args.reports, labels, allow_different_tasks=args.allow_different_tasks)
    out = Path(args.out)
    write_json(out / "compare.json", table)
    with atomic_write(out / "compare.md") as f:
        f.write(markdown(table))
    if not args.no_plots:
        plot(table, out / "compare.png")
    ref = table["columns"][0]
    for c in table["columns"]:
        gap = "" if c is ref else f" ({100 * (c['overall']['accuracy'] - ref['overall']['accuracy']):+.1f} pp)"
        print(f"{c['label']}: accuracy {c['overall']['accuracy']:.3f}{gap}, strict {c['overall']['strict_accuracy']:.3f}")
    print(f"-> {out / 'compare.md'}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compare",
        help="the teacher and its students side by side: per category and error type, Markdown and a PNG",
        description=fill_paragraphs("Put eval reports side by side: overall accuracy, strict accuracy, schema- and format-valid "
        "rates, tokens/s and latency; accuracy and strict accuracy per category; the error mix. The first REPORT "
        "is the reference (usually the teacher) and the others show their gap to it in percentage points. Writes "
        "compare.md, compare.json and compare.png (grouped bars) into --out."),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  distill compare reports/teacher checkpoints/qwen05-dpo/eval checkpoints/qwen15-dpo/eval "
        "--out reports/compare",
    )
    p.add_argument("reports", nargs="+", metavar="REPORT", help="report.json files or folders holding one; the first is the reference")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--labels", default=None, help="comma-separated column names, one per REPORT (default: the adapter's "
                   "folder name, or the model name)")
    p.add_argument("--allow-different-tasks", action="store_true",
                   help="compare reports scored on different task files (refused by default: the numbers do not compare)")
    p.add_argument("--no-plots", action="store_true", help="skip compare.png")
    p.set_defaults(run=compare_cli)
