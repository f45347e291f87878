"""Pairs mined per second from 100k teacher traces, on one core.

    OMP_NUM_THREADS=1 python benchmarks/pairs_speed.py [--traces 100000] [--synthetic 2]

Traces are BFCL's answers and typical mistakes for every imported BFCL task (eval/bfcl_reference.py), rendered as
raw text in rotating formats and carrying `tool_calls` parsed from it, exactly as `distill generate` writes them
(parsing happens once, at generation time). Mining does the real work: verify, de-duplicate, make synthetic
negatives, select, build rows. `--raw-only` drops `tool_calls` so mining parses the raw text too. Writing the dataset (Arrow + JSONL + card) is timed separately. Aim: well over
10k pairs/s for mining. The `openai` client's own overhead is measured by benchmarks/generate_overhead.py.
Prints a table last; writes JSON under $OUT when set.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from data_gen.bfcl import import_bfcl
from data_gen.pairs import PairsConfig, mine_pairs, summarize, write_pairs
from eval.bfcl_reference import perturbed_cases
from eval.parse import parse_output, render
from eval.tasks import task_from_dict

CATEGORIES = ["simple_python", "multiple", "parallel", "parallel_multiple", "irrelevance", "live_simple", "live_multiple"]


def build(n_traces: int, raw_only: bool = False):
    from eval.bfcl_data import bfcl_data_dir

    records = import_bfcl(CATEGORIES)
    tasks = {r["id"]: task_from_dict(r) for r in records}
    data = bfcl_data_dir()
    traces, formats = [], ("hermes", "python", "json", "openai")
    while len(traces) < n_traces:
        for cat in CATEGORIES:
            entries = {e["id"]: e for e in map(json.loads, open(data / f"BFCL_v4_{cat}.json"))}
            answers = {} if "irrelevance" in cat else {a["id"]: a for a in map(json.loads, open(data / "possible_answer" / f"BFCL_v4_{cat}.json"))}
            for tid, e in entries.items():
                for case in perturbed_cases(e, answers.get(tid), seed=len(traces)):
                    fmt = formats[len(traces) % len(formats)]
                    t = {"task_id": tid, "model": "teacher", "sample": len(traces)}
                    if fmt == "openai" and case.calls:
                        t["raw"], structured = "", render(case.calls, "openai")
                    else:
                        t["raw"] = render(case.calls, fmt) if case.calls else "No function fits this request."
                        structured = None
                    if not raw_only:  # what generate records: the parse of the output
                        t["tool_calls"] = parse_output(t["raw"], structured).trace_tool_calls
                    traces.append(t)
                    if len(traces) >= n_traces:
                        return tasks, traces
    return tasks, traces


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traces", type=int, default=100_000)
    ap.add_argument("--synthetic", type=int, default=2)
    ap.add_argument("--max-pairs-per-task", type=int, default=64)
    ap.add_argument("--raw-only", action="store_true", help="traces without tool_calls: mining parses raw text too")
    args = ap.parse_args()
    tasks, traces = build(args.traces, args.raw_only)
    config = PairsConfig(synthetic=args.synthetic, max_pairs_per_task=args.max_pairs_per_task)

    t0 = time.perf_counter()
    rows, stats = mine_pairs(tasks, traces, None, config)
    mine_s = time.perf_counter() - t0

    # correctness first: every row must be a verified pair, from the right task
    assert rows and all(r["task_id"] in tasks and r["chosen"] != r["rejected"] for r in rows)

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        info = {"tasks": "bench", "tasks_fingerprint": "n/a", "teacher": {"models": {"teacher": len(traces)}, "backends": [], "sampling": []},
                "student": {"models": {}, "backends": [], "sampling": []}, "config": {}}
        write_pairs(Path(tmp) / "pairs", rows, stats, info)
        write_s = time.perf_counter() - t0
    summary = summarize(rows)
    result = {
        "traces": len(traces), "tasks": len(tasks), "pairs": len(rows), "mine_s": mine_s, "write_s": write_s,
        "traces_per_s": len(traces) / mine_s, "pairs_per_s": len(rows) / mine_s, "summary": summary,
    }
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "pairs_speed.json").write_text(json.dumps(result, indent=2))
    kind = "raw text only" if args.raw_only else "with parsed tool_calls, as generate writes them"
    print(f"{len(traces):,} traces ({kind}) over {len(tasks):,} tasks -> {len(rows):,} pairs (synthetic {args.synthetic}/task, cap {args.max_pairs_per_task}/task)")
    print(f"{'stage':28s} {'seconds':>8s} {'per second':>12s} {'vs 10k/s aim':>13s}")
    print(f"{'mine (verify+select+rows)':28s} {mine_s:8.2f} {len(rows) / mine_s:10,.0f}/s {len(rows) / mine_s / 10_000:12.2f}x")
    print(f"{'  traces verified':28s} {mine_s:8.2f} {len(traces) / mine_s:10,.0f}/s")
    print(f"{'write (Arrow+JSONL+card)':28s} {write_s:8.2f} {len(rows) / write_s:10,.0f}/s")


if __name__ == "__main__":
    main()
