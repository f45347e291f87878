"""Composed multi-call tasks: the queries of k single-call tasks joined into one request, their expected calls
into one parallel answer, so a student sees many more multi-call examples than BFCL's live categories hold.

    sources  {"id": "live_simple_3", "messages": [{"role": "user", "content": "Weather in Berlin?"}],
              "tools": [get_weather], "expected": [{"name": "get_weather", "arguments": {"city": ["Berlin"]}}]}
             {"id": "live_simple_9", "messages": [{"role": "user", "content": "Weather in Paris?"}], ...}
    composed {"id": "composed:live_simple_3+live_simple_9", "category": "composed_parallel",
              "messages": [{"role": "user", "content": "Weather in Berlin?\\n\\nWeather in Paris?"}],
              "tools": [get_weather],
              "expected": [{"name": "get_weather", "arguments": {"city": ["Berlin"]}},
                           {"name": "get_weather", "arguments": {"city": ["Paris"]}}],
              "composed_from": ["live_simple_3", "live_simple_9"], "source": "bfcl-eval==2026.3.23"}

    distill compose --tasks train.jsonl --k 2-3 --share 0.3 --seed 0 --out train_composed.jsonl

One function called k times is `composed_parallel` (BFCL's parallel); several functions is
`composed_parallel_multiple` (BFCL's parallel_multiple). The categories say "composed" so that reports never mix
them with BFCL's own. Tools are the union of the sources' tools, deduplicated by name; two different tools with
the same name cannot be offered together, so such a combination is skipped. A source must ask one question (a
single user message: system prompts and history do not join) and expect exactly one call. Every composed task is
checked by the task loader, and its gold answer (the expected calls with their first acceptable values, in
order and reversed) must be correct by the verifier: the order-free matching of parallel calls is BFCL's greedy
one, and a combination whose calls it could confuse is skipped rather than written with a wrong answer key. So
is a combination of two tasks that accept the same call (the same request in other words): one call repeated
would answer it.

Compose from training tasks only: a composed task contains its sources' questions, so composing an evaluation
task into training data leaks it (`composed_from` lists the sources to check).
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
from collections import Counter

from eval.io import DistillError, write_jsonl
from eval.tasks import task_from_dict

PARALLEL = "composed_parallel"
PARALLEL_MULTIPLE = "composed_parallel_multiple"
ID_PREFIX = "composed:"

_KEY_JSON = json.JSONEncoder(sort_keys=True, ensure_ascii=False)


class NotComposable(DistillError):
    """These tasks cannot be joined into one (conflicting tools, or an answer key the verifier cannot match)."""


def why_not_source(record: dict) -> str | None:
    """Why a task cannot be a source of composition, or None when it can."""
    messages = record.get("messages")
    if not (isinstance(messages, list) and len(messages) == 1 and isinstance(messages[0], dict)
            and messages[0].get("role") == "user" and isinstance(messages[0].get("content"), str)
            and messages[0]["content"].strip()):
        return "needs exactly one user message with text (no system prompt or history)"
    if len(record.get("expected") or []) != 1:
        return f"expects {len(record.get('expected') or [])} calls, not 1"
    return None


def _join(queries: list[str], style: int) -> str:
    """One request from several; the style varies how, so a student does not learn one separator."""
    if style == 0:
        return "\n\n".join(queries)
    if style == 1:
        return "\n".join(f"{i}. {q}" for i, q in enumerate(queries, 1))
    # "In addition, what is ..." reads better with a lower-case first letter, but not "I ..." or "NYC ...".
    rest = [q[0].lower() + q[1:] if len(q) > 1 and q[0].isupper() and q[1].islower() else q for q in queries[1:]]
    return " ".join([queries[0], *(f"In addition, {q}" for q in rest)])


JOIN_STYLES = 3


def compose(records: list[dict], *, style: int = 0) -> dict:
    """One task from k >= 2 single-call task records (in the order given). Raises DistillError naming the task
    when a record cannot be a source, NotComposable when the records cannot be joined."""
    from data_gen.pairs import gold_answer
    from eval.match import OK, check_call
    from eval.verify import verify

    if len(records) < 2:
        raise DistillError(f"compose needs at least 2 tasks, got {len(records)}")
    ids = [str(r.get("id")) for r in records]
    if len(set(ids)) != len(ids):
        raise DistillError(f"compose: the same task twice among {ids}")
    for r, tid in zip(records, ids, strict=True):
        reason = why_not_source(r)
        if reason:
            raise DistillError(f"task {tid!r} cannot be composed: it {reason}")
    tools: dict[str, dict] = {}
    owner: dict[str, str] = {}
    for r, tid in zip(records, ids, strict=True):
        for tool in r["tools"]:
            name = tool.get("function", {}).get("name")
            if name in tools and _KEY_JSON.encode(tools[name]) != _KEY_JSON.encode(tool):
                raise NotComposable(f"tasks {owner[name]!r} and {tid!r} define different tools named {name!r}")
            if name not in tools:
                tools[name], owner[name] = tool, tid
    queries = [r["messages"][0]["content"].strip() for r in records]
    expected = [copy.deepcopy(r["expected"][0]) for r in records]
    category = PARALLEL if len({c["name"] for c in expected}) == 1 else PARALLEL_MULTIPLE
    sources = sorted({str(r["source"]) for r in records if r.get("source")})
    record = {
        "id": ID_PREFIX + "+".join(ids),
        "category": category,
        "messages": [{"role": "user", "content": _join(queries, style % JOIN_STYLES)}],
        "tools": copy.deepcopy(list(tools.values())),
        "expected": expected,
        "composed_from": ids,
    }
    if sources:
        record["source"] = ", ".join(sources)
    task = task_from_dict(record, f"composed task {record['id']}")
    calls = gold_answer(task).calls
    for order in (calls, calls[::-1]):
        verdict = verify(task, {"task_id": task.id, "model": "gold", "tool_calls": order})
        if not verdict["correct"]:
            raise NotComposable(f"{record['id']}: the verifier does not accept the joined answer key "
                                f"({verdict['error']}: {verdict['detail']})")
    # Two sources may ask for the same call in other words; then one call repeated would count as answering
    # both, and the task teaches nothing about making different calls.
    for i, call in enumerate([*calls, *_with_optional(task.expected)]):
        i %= len(calls)
        for j, exp in enumerate(task.matcher):
            if i != j and check_call(exp, call)[0] == OK:
                raise NotComposable(f"{record['id']}: tasks {ids[i]!r} and {ids[j]!r} accept the same call")
    return record


def _with_optional(expected: list[dict]) -> list[dict]:
    """The expected calls with the first real value of every argument, optional ones included."""
    return [{"name": e["name"], "arguments": {p: next(v for v in vals if v != "")
                                              for p, vals in e.get("arguments", {}).items() if any(v != "" for v in vals)}}
            for e in expected]


def compose_tasks(
    records: list[dict],
    n: int,
    *,
    k: tuple[int, int] = (2, 3),
    parallel_share: float = 0.5,
    max_tools: int | None = None,
    seed: int = 0,
) -> list[dict]:
    """Up to n composed tasks from the eligible records (see why_not_source), deterministic for a seed. Each
    draws k uniformly from the range; with probability parallel_share it joins tasks that call the same tool
    (composed_parallel, when enough such tasks exist), otherwise any k tasks. Combinations already drawn,
    with conflicting tools, an ambiguous answer key or more than max_tools tools are skipped; fewer than n come
    back when the sources run out."""
    k_min, k_max = k
    if not 2 <= k_min <= k_max:
        raise DistillError(f"k must be a range with 2 <= min <= max, got {k_min}-{k_max}")
    if not 0 <= parallel_share <= 1:
        raise DistillError(f"parallel_share must be in [0, 1], got {parallel_share}")
    pool = [r for r in records if why_not_source(r) is None]
    if len(pool) < k_min:
        raise DistillError(f"only {len(pool)} tasks can be composed (one user message, one expected call); "
                           f"k needs at least {k_min}")
    # Tasks calling the same tool, defined the same way: the sources of composed_parallel.
    same_tool: dict[str, list[dict]] = {}
    for r in pool:
        name = r["expected"][0]["name"]
        tool = next(t for t in r["tools"] if t.get("function", {}).get("name") == name)
        same_tool.setdefault(_KEY_JSON.encode(tool), []).append(r)
    groups = [g for g in same_tool.values() if len(g) >= 2]

    rng = random.Random(seed)
    out: list[dict] = []
    seen: set[frozenset] = set()
    attempts = 0
    while len(out) < n and attempts < 50 * n + 100:
        attempts += 1
        size = rng.randint(k_min, k_max)
        fitting = [g for g in groups if len(g) >= size]
        if fitting and rng.random() < parallel_share:
            picks = rng.sample(rng.choice(fitting), size)  # a tool chosen uniformly, not by how common it is
        else:
            picks = rng.sample(pool, min(size, len(pool)))
        key = frozenset(r["id"] for r in picks)
        if key in seen:
            continue
        seen.add(key)
        if len({r["messages"][0]["content"].strip() for r in picks}) < len(picks):
            continue  # the same question twice
        try:
            task = compose(picks, style=rng.randrange(JOIN_STYLES))
        except NotComposable:
            continue
        if max_tools is not None and len(task["tools"]) > max_tools:
            continue
        out.append(task)
    return out


def mix_composed(records: list[dict], share: float, *, sources: list[dict] | None = None,
                 **kwargs) -> tuple[list[dict], int]:
    """The records followed by tasks composed from `sources` (default: the records) making up `share` of the
    result (share 0.3: 30 composed per 70 originals). Returns (tasks, how many composed ones were asked for; fewer
    are there when the sources run out); kwargs go to compose_tasks."""
    if not 0 <= share < 1:
        raise DistillError(f"share must be in [0, 1), got {share}")
    wanted = round(share * len(records) / (1 - share))
    composed = compose_tasks(records if sources is None else sources, wanted, **kwargs) if wanted else []
    clash = {r["id"] for r in composed} & {r["id"] for r in records}
    if clash:
        raise DistillError(f"the tasks already hold composed tasks {sorted(clash)[:3]}: compose from the originals")
    return [*records, *composed], wanted


def parse_k(text: str) -> tuple[int, int]:
    """'2-3' -> (2, 3); '2' -> (2, 2)."""
    try:
        lo, _, hi = text.partition("-")
        k = (int(lo), int(hi or lo))
    except ValueError:
        raise DistillError(f"--k must be N or MIN-MAX (e.g. 2-3), got {text!r}") from None
    return k


def compose_cli(args) -> int:
    from eval.tasks import load_tasks

    tasks = load_tasks(args.tasks)  # checks every task, errors name file and line
    records = [t.record for t in tasks.values()]
    sources = records
    if args.categories:
        cats = {c.strip() for c in args.categories.split(",") if c.strip()}
        unknown = cats - {r.get("category", "default") for r in records}
        if unknown:
            raise DistillError(f"{args.tasks}: no tasks of categor{'y' if len(unknown) == 1 else 'ies'} "
                               f"{', '.join(sorted(unknown))}")
        sources = [r for r in records if r.get("category", "default") in cats]
    k = parse_k(args.k)
    mixed, wanted = mix_composed(records, args.share, sources=sources, k=k, parallel_share=args.parallel_share,
                                 max_tools=args.max_tools, seed=args.seed)
    composed = mixed[len(records):]
    written = write_jsonl(args.out, mixed)
    counts = Counter(r["category"] for r in composed)
    eligible = sum(why_not_source(r) is None for r in sources)
    print(f"wrote {written} tasks to {args.out}: {len(records)} from {args.tasks} + {len(composed)} composed "
          f"({', '.join(f'{c}: {v}' for c, v in sorted(counts.items())) or 'none'}) from {eligible} single-call "
          f"tasks, k {k[0]}-{k[1]}, composed share {len(composed) / written:.2f}")
    if len(composed) < wanted:
        print(f"distill compose: only {len(composed)} of the {wanted} composed tasks asked for could be built "
              f"(too few compatible single-call tasks)", file=sys.stderr)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compose",
        help="add multi-call tasks made by joining single-call tasks (composed_parallel, composed_parallel_multiple)",
        description="Join the questions of k single-call tasks into one request and their expected calls into one "
        "parallel answer (one tool called k times: composed_parallel; several tools: composed_parallel_multiple), "
        "with the union of their tools, and write --tasks plus the composed tasks to --out. A source task needs one "
        "user message and one expected call; combinations whose tools clash by name, or whose joined answer key "
        "the verifier would not accept, are skipped. Ids say what was joined (composed:ID1+ID2) and "
        "`composed_from` lists the sources. Compose training tasks only: a composed task contains its sources' "
        "questions.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  distill import bfcl --categories live_simple,live_multiple --out train.jsonl\n"
        "  distill compose --tasks train.jsonl --k 2-3 --share 0.3 --seed 0 --out train_composed.jsonl",
    )
    p.add_argument("--tasks", required=True, help="tasks .jsonl file; all of its tasks are written to --out too")
    p.add_argument("--out", required=True, help="output tasks .jsonl file (written atomically)")
    p.add_argument("--k", default="2-3", help="tasks joined per composed task, N or MIN-MAX, drawn uniformly "
                   "(default: %(default)s)")
    p.add_argument("--share", type=float, default=0.3, help="fraction of --out that is composed, in [0, 1): 0.3 adds "
                   "3 composed tasks per 7 input tasks (default: %(default)s)")
    p.add_argument("--parallel-share", type=float, default=0.5, help="fraction of composed tasks drawn from tasks "
                   "that call the same tool (composed_parallel); the rest join any tasks (default: %(default)s)")
    p.add_argument("--categories", default=None, help="comma-separated categories to compose from (default: every "
                   "single-call task in --tasks)")
    p.add_argument("--max-tools", type=int, default=None, help="skip combinations offering more tools than this, to "
                   "bound prompt length (default: no limit)")
    p.add_argument("--seed", type=int, default=0, help="seed for drawing and joining; same seed, same output "
                   "(default: %(default)s)")
    p.set_defaults(run=compose_cli)
