"""Checks per second: distill's verifier (JSON Schema validation + BFCL matching + error label) against BFCL's own
AST checker (matching only), on the same correct and perturbed answers, in one run, on one core.

    OMP_NUM_THREADS=1 python benchmarks/verify_speed.py [--categories simple_python,multiple,...] [--repeat 3]

Both sides get already-decoded calls (a trace with `tool_calls`), so parsing is excluded from the ratio; a third
row times our verifier from raw text (Hermes `<tool_call>` output), parsing included. Needs bfcl-eval
(`pip install --no-deps bfcl-eval`). Prints a table last; writes JSON under $OUT when set.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from data_gen.bfcl import convert_entry
from eval.bfcl_data import bfcl_data_dir
from eval.bfcl_reference import BfclChecker, perturbed_cases
from eval.parse import render
from eval.tasks import task_from_dict
from eval.verify import verify

AST_CATEGORIES = "simple_python,multiple,parallel,parallel_multiple,live_simple,live_multiple,live_parallel,live_parallel_multiple"


def build_cases(categories: list[str]):
    data = bfcl_data_dir()
    cases = []
    for cat in categories:
        entries = [json.loads(line) for line in open(data / f"BFCL_v4_{cat}.json")]
        answers = {a["id"]: a for a in map(json.loads, open(data / "possible_answer" / f"BFCL_v4_{cat}.json"))}
        for e in entries:
            a = answers[e["id"]]
            task = task_from_dict(convert_entry(e, a, cat, "bench"))
            for c in perturbed_cases(e, a):
                decoded = [{x["name"]: x["arguments"]} for x in c.calls]
                trace = {"task_id": e["id"], "model": "m", "sample": 0, "tool_calls": c.calls}
                raw_trace = {"task_id": e["id"], "model": "m", "sample": 0, "raw": render(c.calls, "hermes") if c.calls else "no call"}
                cases.append((e, a, cat, decoded, task, trace, raw_trace))
    return cases


def best_of(repeat: int, fn) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--categories", default=AST_CATEGORIES)
    ap.add_argument("--repeat", type=int, default=3, help="timed passes per side; the fastest counts")
    args = ap.parse_args()
    checker = BfclChecker()
    cases = build_cases(args.categories.split(","))
    n = len(cases)

    # correctness first: both sides must agree on every case before any timing means anything
    disagree = sum(bool(checker.correct(e, a, cat, tc["tool_calls"])) != verify(task, tc)["correct"] for e, a, cat, _, task, tc, _ in cases)
    assert disagree == 0, f"{disagree} of {n} cases disagree with BFCL's checker"

    ast_checker, lang, model = checker.ast_checker, checker.language.PYTHON, checker.MODEL

    def bfcl():
        for e, a, cat, decoded, *_ in cases:
            ast_checker(e["function"], decoded, a["ground_truth"], lang, cat, model)

    def ours():
        for *_, task, trace, _raw in cases:
            verify(task, trace)

    def ours_raw():
        for *_, task, _trace, raw in cases:
            verify(task, raw)

    t_bfcl, t_ours, t_raw = best_of(args.repeat, bfcl), best_of(args.repeat, ours), best_of(args.repeat, ours_raw)
    rows = [
        ("BFCL ast_checker (matching only)", n / t_bfcl, t_bfcl / n * 1e6, 1.0),
        ("distill verify (schema + matching + label)", n / t_ours, t_ours / n * 1e6, t_bfcl / t_ours),
        ("distill verify from raw Hermes text", n / t_raw, t_raw / n * 1e6, t_bfcl / t_raw),
    ]
    result = {"cases": n, "categories": args.categories, "rows": [dict(zip(("name", "checks_per_s", "us_per_check", "speed_vs_bfcl"), r, strict=True)) for r in rows]}
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "verify_speed.json").write_text(json.dumps(result, indent=2))
    print(f"{n} cases, all verdicts agree with BFCL's checker; fastest of {args.repeat} passes, one process")
    print(f"{'verifier':45s} {'checks/s':>10s} {'us/check':>9s} {'x BFCL':>7s}")
    for name, cps, us, ratio in rows:
        print(f"{name:45s} {cps:10,.0f} {us:9.1f} {ratio:7.2f}")


if __name__ == "__main__":
    main()
