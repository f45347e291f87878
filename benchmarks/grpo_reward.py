"""Does the verifier's reward give GRPO something to learn from, and how fast is it? Measured on a student's own
sampled answers to BFCL tasks.

    distill import bfcl --categories live_simple,live_multiple,live_irrelevance --limit 16 --out live.jsonl
    distill generate --tasks live.jsonl --backend hf --model pkg:smollm2-135m-instruct \\
        --chat-template hermes_tool --samples 8 --temperature 1.0 --max-new-tokens 128 \\
        --seed 0 --out base.jsonl
    python benchmarks/grpo_reward.py --tasks live.jsonl --traces base=base.jsonl [--traces sft=sft.jsonl] \\
        [--group-size 8] [--repeat 5]

GRPO's advantage is an answer's reward minus the mean of its group (the `num_generations` answers to one prompt);
a group whose answers all score the same contributes no gradient. For each reward (the `binary` and `fine`
presets, and each component alone) this prints the mean reward, the share of groups with any spread (what TRL
logs as 1 - `frac_reward_zero_std`) and the mean spread within a group, from `--samples` answers per task sampled
at GRPO's temperature and cut into groups of --group-size. Then the reward's speed: answers scored per second by
the reward (parse + verify + every component) against `eval.verify.verify` alone on the same answers, fastest of
--repeat passes, one process. Writes benchmarks/results/grpo_reward-<date>-<cpu|gpu>.md and .json.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from distill.grpo import COMPONENTS, PRESETS, resolve_reward, score_answer, total_reward  # noqa: E402
from eval.io import read_jsonl, write_json  # noqa: E402
from eval.tasks import file_fingerprint, load_tasks  # noqa: E402
from eval.verify import verify  # noqa: E402

REWARDS = {**{p: resolve_reward(p) for p in PRESETS}, **{f"{c} only": resolve_reward(c) for c in COMPONENTS}}


def groups_of(traces: list[dict], size: int) -> list[list[dict]]:
    """Each task's answers in sample order, cut into groups of `size` (a tail shorter than size is dropped)."""
    by_task: dict[str, list[dict]] = defaultdict(list)
    for t in sorted(traces, key=lambda t: (t["task_id"], t.get("sample", 0))):
        by_task[t["task_id"]].append(t)
    return [
        answers[i : i + size] for answers in by_task.values() for i in range(0, len(answers) - size + 1, size)
    ]


def signal(tasks, groups: list[list[dict]]) -> dict:
    """Per reward: mean reward, share of groups with any spread, mean within-group standard deviation; per
    category the share of groups with spread under each preset; and the answers' verdict errors."""
    scored = [[score_answer(tasks[t["task_id"]], t.get("raw") or "") for t in g] for g in groups]
    out = {"groups": len(groups), "answers": sum(len(g) for g in groups), "rewards": {}, "by_category": {}}
    out["errors"] = dict(Counter(err for g in scored for _, err in g).most_common())
    for name, spec in REWARDS.items():
        values = [[total_reward(s, spec) for s, _ in g] for g in scored]
        spread = [statistics.pstdev(v) for v in values]
        out["rewards"][name] = {
            "mean": round(statistics.fmean(x for v in values for x in v), 4),
            "groups_with_signal": round(sum(s > 1e-9 for s in spread) / len(spread), 4),
            "mean_group_std": round(statistics.fmean(spread), 4),
        }
    for cat in sorted({tasks[g[0]["task_id"]].category for g in groups}):
        idx = [i for i, g in enumerate(groups) if tasks[g[0]["task_id"]].category == cat]
        out["by_category"][cat] = {"groups": len(idx)}
        for name in PRESETS:
            spec = REWARDS[name]
            spread = [statistics.pstdev([total_reward(s, spec) for s, _ in scored[i]]) for i in idx]
            out["by_category"][cat][name] = round(sum(s > 1e-9 for s in spread) / len(spread), 4)
    return out


def best_of(repeat: int, fn) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def speed(tasks, traces: list[dict], repeat: int) -> dict:
    """Answers per second: the reward (all components, as GRPO computes it) and the plain verdict, on raw text."""
    pairs = [(tasks[t["task_id"]], t.get("raw") or "") for t in traces]
    raw = [(task, {"task_id": task.id, "raw": text}) for task, text in pairs]
    t_reward = best_of(repeat, lambda: [score_answer(task, text) for task, text in pairs])
    t_verify = best_of(repeat, lambda: [verify(task, trace) for task, trace in raw])
    n = len(pairs)
    return {
        "answers": n,
        "reward_answers_per_s": round(n / t_reward),
        "verify_answers_per_s": round(n / t_verify),
        "reward_time_vs_verify": round(t_reward / t_verify, 2),
    }


def markdown(res: dict) -> str:
    lines = [
        f"# GRPO reward signal and speed, {res['date']}",
        "",
        f"Tasks: {res['tasks']['path']} ({res['tasks']['n']} tasks: {res['tasks']['categories']}). Answers: "
        f"sampled by each student at temperature {res['temperature']}, cut into groups of {res['group_size']} "
        "(GRPO's num_generations). 'groups with signal' = share of groups whose answers do not all score the "
        "same: only those move the policy.",
        "",
    ]
    for label, s in res["students"].items():
        lines += [
            f"## {label}: {s['traces']} ({s['groups']} groups, {s['answers']} answers)",
            "",
            "Verdicts: " + ", ".join(f"{k} {v}" for k, v in s["errors"].items()),
            "",
            "| reward | mean | groups with signal | mean std in a group |",
            "| --- | --- | --- | --- |",
        ]
        for name, r in s["rewards"].items():
            lines.append(
                f"| {name} | {r['mean']:.3f} | {r['groups_with_signal']:.0%} | {r['mean_group_std']:.3f} |"
            )
        lines += [
            "",
            "| category | groups | " + " | ".join(f"{p}: with signal" for p in PRESETS) + " |",
            "| --- | --- |" + " --- |" * len(PRESETS),
        ]
        for cat, c in s["by_category"].items():
            lines.append(f"| {cat} | {c['groups']} | " + " | ".join(f"{c[p]:.0%}" for p in PRESETS) + " |")
        lines.append("")
    sp = res["speed"]
    lines += [
        "## Speed",
        "",
        f"{sp['answers']} sampled answers (raw text), fastest of {res['repeat']} passes, one process: the reward "
        f"(parse + verify + all components) {sp['reward_answers_per_s']:,} answers/s; `eval.verify.verify` alone "
        f"{sp['verify_answers_per_s']:,} answers/s; the reward takes {sp['reward_time_vs_verify']}x the verdict's "
        "time.",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", required=True, help="tasks .jsonl file the traces answer")
    p.add_argument(
        "--traces",
        action="append",
        required=True,
        help="LABEL=traces.jsonl, several answers per task (distill generate --samples N); repeatable",
    )
    p.add_argument("--group-size", type=int, default=8, help="answers per GRPO group (num_generations)")
    p.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        help="the temperature the traces were sampled at (recorded only)",
    )
    p.add_argument("--repeat", type=int, default=5, help="timed passes; the fastest counts")
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"], help="names the results file")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results"), help="folder for the results")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    tasks = load_tasks(args.tasks)
    res = {
        "date": datetime.date.today().isoformat(),
        "tasks": {
            "path": args.tasks,
            "n": len(tasks),
            "fingerprint": file_fingerprint(args.tasks),
            "categories": dict(Counter(t.category for t in tasks.values())),
        },
        "group_size": args.group_size,
        "temperature": args.temperature,
        "repeat": args.repeat,
        "rewards": {name: spec.to_dict() for name, spec in REWARDS.items()},
        "students": {},
    }
    all_traces = []
    for spec in args.traces:
        label, _, path = spec.partition("=")
        traces = [t for _, t in read_jsonl(path) if t["task_id"] in tasks]
        all_traces += traces
        res["students"][label] = {"traces": path, **signal(tasks, groups_of(traces, args.group_size))}
    res["speed"] = speed(tasks, all_traces, args.repeat)
    out = Path(args.results) / f"grpo_reward-{res['date']}-{args.device}"
    write_json(out.with_suffix(".json"), res)
    out.with_suffix(".md").write_text(markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
