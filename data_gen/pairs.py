"""Mine DPO preference pairs from verified traces: correct teacher answers against the teacher's own mistakes, the
student's mistakes (on-policy negatives) and synthetic hard negatives.

    row {"prompt": [{"role": "user", "content": "What's the weather in Paris?"}],
         "chosen":   [{"role": "assistant", "content": null, "tool_calls": [{"type": "function",
                       "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]}],
         "rejected": [{"role": "assistant", "content": "I would use get_weather for this.", "tool_calls": null}],
         "tools": "[{\"type\": \"function\", ...}]", "task_id": "simple_python_12", "category": "simple_python",
         "chosen_source": "teacher", "rejected_source": "synthetic", "rejected_error": "no_call"}

Chosen answers are strict: correct by BFCL's rules and schema-valid. Every rejected answer is verified incorrect
and labelled with its error. Calls are stored as structured messages (arguments as JSON strings, `tools` as a
JSON string: as nested structs, Arrow would merge fields across rows), so each student's own chat template renders
them in its own format at training time; malformed and prose answers stay raw text.

    rows, stats = mine_pairs(tasks, teacher_traces, student_traces, PairsConfig(synthetic=2))
    write_pairs("pairs/", rows, stats, ...)
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import json
import os
import random
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from data_gen.negatives import Answer, synthetic_negatives
from eval.io import DistillError, atomic_folder, atomic_write, read_jsonl, write_json, write_jsonl
from eval.parse import CALLS, MALFORMED
from eval.tasks import Task, file_fingerprint, load_tasks
from eval.verify import ERRORS, judge, parse_trace

SOURCES = ("teacher", "student", "synthetic")
CHOSEN_FROM = ("teacher", "gold", "teacher-or-gold")
ABSTAIN_TEXT = "None of the available functions can be used for this request."


@dataclass
class PairsConfig:
    chosen_from: str = "teacher"  # teacher | gold | teacher-or-gold
    synthetic: int = 2  # synthetic negatives made per task
    max_pairs_per_task: int = 8
    mix: dict[str, float] = field(default_factory=lambda: {s: 1.0 for s in SOURCES})  # relative share per source
    error_weights: dict[str, float] = field(default_factory=dict)  # relative share per error type (default 1)
    test_size: float = 0.1  # share of tasks (not pairs) in the test split
    seed: int = 0


@dataclass
class _Candidate:
    key: str  # canonical form, for de-duplication
    answer: Answer  # turned into a message only if selected
    source: str
    error: str


# One encoder, built once: json.dumps with non-default options builds a new encoder on every call.
_KEY_JSON = json.JSONEncoder(sort_keys=True, ensure_ascii=False)
_ARGS_JSON = json.JSONEncoder(ensure_ascii=False)


def _canonical(answer_calls: list[dict] | None, text: str | None) -> str:
    if answer_calls is not None:
        return "calls:" + _KEY_JSON.encode(answer_calls)
    return "text:" + (text or "").strip()


def assistant_message(answer: Answer) -> dict:
    if answer.calls:
        return {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"type": "function", "function": {"name": c["name"], "arguments": _ARGS_JSON.encode(c["arguments"])}}
                for c in answer.calls
            ],
        }
    return {"role": "assistant", "content": answer.text or "", "tool_calls": None}


def _trace_answer(trace: dict, parsed) -> Answer:
    if parsed.status == CALLS:
        return Answer(parsed.calls)
    raw = trace.get("raw")
    return Answer(None, raw if isinstance(raw, str) else "")


def gold_answer(task: Task) -> Answer:
    """The task's expected calls with the first acceptable value of each argument ("" first: left out)."""
    if not task.expected:
        return Answer(None, ABSTAIN_TEXT)
    calls = []
    for e in task.expected:
        args = {p: vals[0] for p, vals in e.get("arguments", {}).items() if vals and vals[0] != ""}
        calls.append({"name": e["name"], "arguments": args})
    return Answer(calls)


def _split_of(task_id: str, test_size: float, seed: int) -> str:
    h = int.from_bytes(hashlib.sha256(f"{seed}:{task_id}".encode()).digest()[:8], "big") / 2**64
    return "test" if h < test_size else "train"


def _diverse(cands: list[_Candidate], weights: dict[str, float], rng: random.Random) -> list[_Candidate]:
    """Order candidates so error types alternate, each type drawn in proportion to its weight."""
    by_error: dict[str, list[_Candidate]] = defaultdict(list)
    for c in cands:
        if weights.get(c.error, 1.0) > 0:
            by_error[c.error].append(c)
    credit = {e: 0.0 for e in by_error}
    out = []
    while by_error:
        for e in credit:
            credit[e] += weights.get(e, 1.0)
        e = max(by_error, key=lambda k: (credit[k], rng.random()))
        credit[e] -= sum(weights.get(k, 1.0) for k in by_error)
        out.append(by_error[e].pop(0))
        if not by_error[e]:
            del by_error[e], credit[e]
    return out


def _select(pools: dict[str, list[_Candidate]], config: PairsConfig, rng: random.Random) -> list[_Candidate]:
    """Up to max_pairs_per_task candidates, sources in proportion to config.mix, leftovers from any source."""
    cap = config.max_pairs_per_task
    ordered = {s: _diverse(pools.get(s, []), config.error_weights, rng) for s in SOURCES if config.mix.get(s, 0) > 0}
    available = {s: c for s, c in ordered.items() if c}
    if not available:
        return []
    total = sum(config.mix[s] for s in available)
    picked = []
    for s, cands in available.items():
        quota = int(cap * config.mix[s] / total)
        picked += cands[:quota]
        del cands[:quota]
    for s in sorted(available, key=lambda s: -config.mix[s]):
        while len(picked) < cap and available[s]:
            picked.append(available[s].pop(0))
    return picked[:cap]


def _output_key(trace: dict) -> str:
    """Identity of a trace's output: a teacher sampled N times often repeats itself word for word, and an
    output seen once for a task needs no second parse or verification."""
    if "tool_calls" not in trace:
        return "raw:" + str(trace.get("raw"))
    tc = trace["tool_calls"]
    if not tc:  # null (malformed) or [] (no call): the raw text is the answer
        return f"tc:{tc!r}:" + str(trace.get("raw"))
    return "calls:" + _KEY_JSON.encode(tc)  # the same string as _canonical() of these calls


def _group(traces: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for t in traces:
        out[t["task_id"]].append(t)
    return out


class _TaskPool:
    """Chosen and rejected candidates for one task, de-duplicated as they are added."""

    def __init__(self, task: Task, stats: Counter):
        self.task, self.stats = task, stats
        self.chosen: list[tuple[str, Answer, str]] = []  # (canonical key, answer, source)
        self.rejected: dict[str, list[_Candidate]] = defaultdict(list)  # by source
        self._seen_rejected: set[str] = set()

    def add_chosen(self, answer: Answer, source: str, key: str | None = None) -> None:
        if not answer.calls:
            key = "text:<abstain>"
        key = key or _canonical(answer.calls, answer.text)
        if all(key != k for k, _, _ in self.chosen):
            self.chosen.append((key, answer, source))

    def add_rejected(self, answer: Answer, source: str, error: str, key: str | None = None) -> None:
        if error == "malformed" and not self.task.expected:
            # BFCL counts an unreadable answer to an irrelevance task as a correct abstention (our verifier does
            # not); a rejected answer must be wrong by both, so these are left out.
            self.stats["malformed_on_irrelevance_skipped"] += 1
            return
        key = key or _canonical(answer.calls, answer.text)
        if key in self._seen_rejected:
            self.stats["rejected_duplicates_dropped"] += 1
            return
        self._seen_rejected.add(key)
        self.rejected[source].append(_Candidate(key, answer, source, error))

    def add_traces(self, traces: list[dict], source: str) -> None:
        """Verify each distinct output once: strictly correct teacher answers become chosen, wrong ones rejected."""
        seen_outputs: set[str] = set()
        for trace in traces:
            self.stats[f"{source}_traces"] += 1
            okey = _output_key(trace)
            if okey in seen_outputs:
                self.stats["repeated_outputs_skipped"] += 1
                continue
            seen_outputs.add(okey)
            parsed = parse_trace(trace)
            correct, schema_valid, error, _ = judge(self.task, parsed)
            # recorded tool_calls taken as they are: their output key is already their canonical form
            key = okey if parsed.calls is not None and parsed.calls is trace.get("tool_calls") else None
            if not correct:
                self.add_rejected(_trace_answer(trace, parsed), source, error, key)
            elif source == "teacher" and schema_valid and parsed.status != MALFORMED:
                self.add_chosen(_trace_answer(trace, parsed), "teacher", key)

    def drop_rejected_equal_to_chosen(self) -> None:
        chosen_keys = {k for k, _, _ in self.chosen}
        for source, cands in self.rejected.items():
            kept = [c for c in cands if c.key not in chosen_keys]
            self.stats["rejected_equal_to_chosen_dropped"] += len(cands) - len(kept)
            self.rejected[source] = kept


def _rows(task: Task, chosen: list, selected: list[_Candidate], split: str) -> list[dict]:
    tools_json = json.dumps(task.tools, ensure_ascii=False)
    chosen_messages = [assistant_message(answer) for _, answer, _ in chosen]
    return [
        {
            "prompt": task.messages,
            "chosen": [chosen_messages[i % len(chosen)]],
            "rejected": [assistant_message(cand.answer)],
            "tools": tools_json,
            "task_id": task.id,
            "category": task.category,
            "chosen_source": chosen[i % len(chosen)][2],
            "rejected_source": cand.source,
            "rejected_error": cand.error,
            "split": split,
        }
        for i, cand in enumerate(selected)
    ]


@contextlib.contextmanager
def _cyclic_gc_paused():
    """Mining allocates millions of small acyclic objects while 100k traces stay alive; each full pass of the
    cyclic collector walks all of them (a third of mining time, measured). Nothing here makes cycles."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def mine_pairs(
    tasks: dict[str, Task],
    teacher_traces: list[dict],
    student_traces: list[dict] | None = None,
    config: PairsConfig | None = None,
) -> tuple[list[dict], dict]:
    """Preference rows (see the module docstring) and statistics about how they were made."""
    config = config or PairsConfig()
    if config.chosen_from not in CHOSEN_FROM:
        raise DistillError(f"chosen_from must be one of {', '.join(CHOSEN_FROM)}, got {config.chosen_from!r}")
    rng = random.Random(config.seed)
    teacher_by_task, student_by_task = _group(teacher_traces), _group(student_traces or [])
    stats: Counter = Counter()
    rows: list[dict] = []
    with _cyclic_gc_paused():
        for task in tasks.values():
            _mine_task(task, teacher_by_task.get(task.id, []), student_by_task.get(task.id, []), config, rng, stats, rows)
    return rows, dict(stats)


def _mine_task(task: Task, teacher: list[dict], student: list[dict], config: PairsConfig, rng: random.Random,
               stats: Counter, rows: list[dict]) -> None:
    """Append one task's pairs to rows."""
    pool = _TaskPool(task, stats)
    pool.add_traces(teacher, "teacher")
    pool.add_traces(student, "student")
    if config.chosen_from == "gold" or (config.chosen_from == "teacher-or-gold" and not pool.chosen):
        gold = gold_answer(task)
        correct, schema_valid, _, _ = judge(task, gold.parsed())
        pool.chosen = []
        if correct and schema_valid:
            pool.add_chosen(gold, "gold")
        else:
            stats["tasks_gold_not_strictly_correct"] += 1
    if not pool.chosen:
        stats["tasks_without_chosen"] += 1
        return
    if config.synthetic > 0:
        calls = pool.chosen[0][1].calls or []
        for _op, answer, error, _detail in synthetic_negatives(task, calls, config.synthetic, rng):
            pool.add_rejected(answer, "synthetic", error)
    pool.drop_rejected_equal_to_chosen()
    selected = _select(pool.rejected, config, rng)
    if not selected:
        stats["tasks_without_rejected"] += 1
        return
    rows += _rows(task, pool.chosen, selected, _split_of(task.id, config.test_size, config.seed))
    stats["tasks_with_pairs"] += 1


def summarize(rows: list[dict]) -> dict:
    def counts(key):
        return dict(Counter(r[key] for r in rows).most_common())

    return {
        "pairs": len(rows),
        "splits": {s: sum(r["split"] == s for r in rows) for s in ("train", "test")},
        "tasks": {s: len({r["task_id"] for r in rows if r["split"] == s}) for s in ("train", "test")},
        "rejected_source": counts("rejected_source"),
        "chosen_source": counts("chosen_source"),
        "rejected_error": counts("rejected_error"),
        "category": counts("category"),
    }


def teacher_info(traces: list[dict]) -> dict:
    """Models, backends and sampling settings seen in the teacher traces (for the card and training runs)."""
    models = Counter(t.get("model") for t in traces)
    sampling = {json.dumps(t["sampling"], sort_keys=True) for t in traces if isinstance(t.get("sampling"), dict)}
    backends = {t["backend"] for t in traces if isinstance(t.get("backend"), str)}
    return {
        "models": dict(models.most_common()),
        "backends": sorted(backends),
        "sampling": [json.loads(s) for s in sorted(sampling)],
    }


# Licenses of the task sources distill imports, by the prefix of a task's `source` field; a card for pairs built
# from them carries it unless --license says otherwise.
SOURCE_LICENSES = {"bfcl-eval": "apache-2.0"}


def sources_license(tasks_path: str | os.PathLike) -> str | None:
    """The one license every task's source shares (from SOURCE_LICENSES), or None when unknown or mixed."""
    found = set()
    for _, record in read_jsonl(tasks_path):
        source = str(record.get("source") or "")
        found.add(next((lic for prefix, lic in SOURCE_LICENSES.items() if source.startswith(prefix)), None))
    return found.pop() if len(found) == 1 else None


def card_configs(splits: dict, *, hub: bool) -> list[dict]:
    """The card's `configs`: the JSONL files beside it in a `distill pairs` folder, so `load_dataset(folder)`
    works; on the Hub, the parquet shards `push_to_hub` writes."""
    files = [{"split": s, "path": f"data/{s}-*" if hub else f"{s}.jsonl"} for s in ("train", "test") if splits.get(s)]
    return [{"config_name": "default", "data_files": files}]


def dataset_card(summary: dict, info: dict) -> str:
    """A Hugging Face dataset card (YAML metadata + Markdown) for the preference dataset."""
    from huggingface_hub import DatasetCard, DatasetCardData

    teacher = ", ".join(f"`{m}`" for m in info["teacher"]["models"]) or "none (gold answers)"
    data = DatasetCardData(
        license=info.get("license") or "other",
        tags=["distill", "dpo", "preference", "function-calling", "tool-use"],
        task_categories=["text-generation"],
        configs=card_configs(summary["splits"], hub=False),
    )
    table = lambda d: "\n".join(f"| {k} | {v} |" for k, v in d.items()) or "| - | - |"  # noqa: E731
    body = f"""
# Function-calling preference pairs (distill)

DPO preference pairs in TRL's conversational format with a `tools` column, mined by
distill from verified traces: **chosen** answers are correct by the Berkeley Function
Calling Leaderboard's AST rules and valid against the tools' JSON Schemas; **rejected** answers were verified
incorrect and carry their error type.

- Teacher: {teacher}
- Teacher backends: {", ".join(info["teacher"]["backends"]) or "n/a"}
- Sampling: {json.dumps(info["teacher"]["sampling"]) if info["teacher"]["sampling"] else "n/a"}
- Student traces (on-policy negatives): {", ".join(f"`{m}`" for m in info["student"]["models"]) or "none"}
- Tasks: `{info["tasks"]}` ({info["tasks_fingerprint"]})
- Settings: {json.dumps(info["config"])}

## Counts

{summary["pairs"]} pairs; train {summary["splits"]["train"]} pairs over {summary["tasks"]["train"]} tasks, test
{summary["splits"]["test"]} pairs over {summary["tasks"]["test"]} tasks (split by task id: no task on both sides).

| rejected source | pairs |
| --- | --- |
{table(summary["rejected_source"])}

| rejected error | pairs |
| --- | --- |
{table(summary["rejected_error"])}

| category | pairs |
| --- | --- |
{table(summary["category"])}

## Columns

`prompt` (messages), `chosen` and `rejected` (one assistant message each: `tool_calls` in OpenAI form with
`arguments` as a JSON string, or plain `content` for malformed and prose answers), `tools` (JSON string of OpenAI
tool definitions), `task_id`, `category`, `chosen_source`, `rejected_source` (`teacher` | `student` | `synthetic`
| `gold`), `rejected_error`.
"""
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n{body}").content


def write_pairs(out_dir: str | os.PathLike, rows: list[dict], stats: dict, info: dict, push_to_hub: str | None = None, private: bool = False) -> dict:
    """Write the DatasetDict (save_to_disk), train/test JSONL, the dataset card and pairs_stats.json into out_dir,
    atomically: everything is built in a temporary folder and moved into place at the end."""
    from datasets import Dataset, DatasetDict

    if not rows:
        raise DistillError("no pairs were mined: no task had both a chosen and a rejected answer (see the statistics above)")
    out_dir = Path(out_dir)
    summary = summarize(rows)
    columns = [k for k in rows[0] if k != "split"]
    splits = {}
    for s in ("train", "test"):
        part = [{k: r[k] for k in columns} for r in rows if r["split"] == s]
        if part:
            splits[s] = Dataset.from_list(part)
    dd = DatasetDict(splits)
    with atomic_folder(out_dir) as tmp:
        dd.save_to_disk(str(tmp / "dataset"))
        for s in splits:
            write_jsonl(tmp / f"{s}.jsonl", ({k: r[k] for k in columns} for r in rows if r["split"] == s))
        with atomic_write(tmp / "README.md") as f:
            f.write(dataset_card(summary, info))
        write_json(tmp / "pairs_stats.json", {"summary": summary, "mining": stats, **info})
    if push_to_hub:
        push_pairs(out_dir, push_to_hub, private=private)
    return summary


def push_pairs(out_dir: str | os.PathLike, repo_id: str, private: bool = False) -> None:
    """Upload the dataset and its card. The token comes from HF_TOKEN or the cached login; it is never printed."""
    from datasets import load_from_disk
    from huggingface_hub import DatasetCard

    token = os.environ.get("HF_TOKEN") or None
    dd = load_from_disk(str(Path(out_dir) / "dataset"))
    dd.push_to_hub(repo_id, private=private, token=token)
    card = DatasetCard.load(Path(out_dir) / "README.md")
    card.data.configs = card_configs({s: len(dd[s]) for s in dd}, hub=True)
    card.push_to_hub(repo_id, token=token)


def _read_traces(paths: list[str], tasks: dict[str, Task]) -> list[dict]:
    from eval.report import read_traces

    return [t for _, _, t in read_traces(paths, tasks)]


def _parse_weights(text: str | None, allowed: tuple[str, ...], flag: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        name, _, value = part.partition("=")
        name = name.strip()
        if name not in allowed:
            raise DistillError(f"{flag}: unknown name {name!r}; one of {', '.join(allowed)}")
        try:
            out[name] = float(value)
        except ValueError:
            raise DistillError(f"{flag}: {part!r} is not NAME=NUMBER") from None
        if out[name] < 0:
            raise DistillError(f"{flag}: {name} must not be negative")
    return out


def pairs(
    tasks_path: str,
    trace_paths: list[str],
    out_dir: str,
    student_trace_paths: list[str] | None = None,
    config: PairsConfig | None = None,
    push_to_hub: str | None = None,
    private: bool = False,
    license: str | None = None,
) -> dict:
    """The whole `distill pairs` job from Python: read, mine, write. Returns the summary. The card's license is
    `license`, else the tasks' sources' license (BFCL: apache-2.0), else `other`."""
    config = config or PairsConfig()
    tasks = load_tasks(tasks_path)
    teacher = _read_traces(trace_paths, tasks) if trace_paths else []
    student = _read_traces(student_trace_paths, tasks) if student_trace_paths else []
    if not teacher and config.chosen_from == "teacher":
        raise DistillError("no teacher traces: pass --traces, or --chosen-from gold")
    rows, stats = mine_pairs(tasks, teacher, student, config)
    info = {
        "tasks": str(tasks_path),
        "tasks_fingerprint": file_fingerprint(tasks_path),
        "teacher": teacher_info(teacher),
        "student": teacher_info(student),
        "config": asdict(config),
        "license": license or sources_license(tasks_path),
    }
    return write_pairs(out_dir, rows, stats, info, push_to_hub=push_to_hub, private=private) | {"mining": stats}


def pairs_cli(args) -> int:
    config = PairsConfig(
        chosen_from=args.chosen_from,
        synthetic=args.synthetic,
        max_pairs_per_task=args.max_pairs_per_task,
        mix={**{s: 1.0 for s in SOURCES}, **_parse_weights(args.mix, SOURCES, "--mix")},
        error_weights=_parse_weights(args.error_weights, ERRORS, "--error-weights"),
        test_size=args.test_size,
        seed=args.seed,
    )
    if not 0 <= config.test_size < 1:
        raise DistillError("--test-size must be in [0, 1)")
    summary = pairs(args.tasks, args.traces or [], args.out, args.student_traces, config, args.push_to_hub, args.private,
                    license=args.license)
    m = summary["mining"]
    print(
        f"{summary['pairs']} pairs (train {summary['splits']['train']}, test {summary['splits']['test']}) from "
        f"{m.get('tasks_with_pairs', 0)} tasks -> {args.out}/dataset (+ train.jsonl, test.jsonl, README.md)"
    )
    print("  rejected sources: " + ", ".join(f"{k} {v}" for k, v in summary["rejected_source"].items()))
    print("  rejected errors:  " + ", ".join(f"{k} {v}" for k, v in summary["rejected_error"].items()))
    skipped = {k: v for k, v in m.items() if k.startswith("tasks_without") or k.startswith("tasks_gold")}
    if skipped:
        print("  skipped: " + ", ".join(f"{k} {v}" for k, v in skipped.items()))
    if args.push_to_hub:
        print(f"  pushed to https://huggingface.co/datasets/{args.push_to_hub}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "pairs",
        help="mine DPO preference pairs (chosen = verified-correct, rejected = verified-wrong) into a HF dataset",
        description="Verify teacher (and student) traces and mine preference pairs: chosen = a correct, schema-valid "
        "teacher answer (or the task's expected calls with --chosen-from gold); rejected = the teacher's incorrect "
        "answers, the student's incorrect answers (--student-traces) and synthetic hard negatives (--synthetic K), each "
        "re-verified and labelled with its error type. Writes --out/dataset (save_to_disk, train/test split by task "
        "id), train.jsonl, test.jsonl, a dataset card README.md and pairs_stats.json.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  distill pairs --tasks tasks.jsonl --traces teacher.jsonl --student-traces student.jsonl "
        "--synthetic 2 --max-pairs-per-task 8 --mix teacher=2,student=1,synthetic=1 --out pairs/",
    )
    p.add_argument("--tasks", required=True, help="tasks .jsonl file")
    p.add_argument("--traces", nargs="*", default=[], help="teacher traces .jsonl file(s)")
    p.add_argument("--student-traces", nargs="*", default=None, help="student traces .jsonl file(s): on-policy negatives")
    p.add_argument("--out", required=True, help="output folder (replaced atomically)")
    p.add_argument(
        "--chosen-from",
        choices=["teacher", "gold", "teacher-or-gold"],
        default="teacher",
        help="where chosen answers come from: correct teacher traces, the tasks' expected calls, or the teacher with "
        "expected calls where no teacher trace is correct (default: %(default)s)",
    )
    p.add_argument("--synthetic", type=int, default=2, metavar="K", help="synthetic hard negatives per task (default: %(default)s)")
    p.add_argument("--max-pairs-per-task", type=int, default=8, help="cap on pairs per task (default: %(default)s)")
    p.add_argument(
        "--mix",
        default=None,
        help="relative share of rejected sources, e.g. teacher=2,student=1,synthetic=1 (default: equal; 0 excludes a source)",
    )
    p.add_argument(
        "--error-weights",
        default=None,
        help="relative share of rejected error types, e.g. schema_violation=2,malformed=0.5 (default: equal; 0 excludes)",
    )
    p.add_argument("--test-size", type=float, default=0.1, help="share of tasks held out as the test split (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed for the split, the mix and synthetic negatives (default: %(default)s)")
    p.add_argument("--push-to-hub", default=None, metavar="REPO", help="also upload the dataset and card to this Hub dataset repo (token from HF_TOKEN or the cached login)")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")
    p.add_argument("--license", default=None, help="license for the dataset card, e.g. cc-by-4.0 (default: the task "
                   "sources' license when distill knows it, e.g. apache-2.0 for BFCL; otherwise 'other')")
    p.set_defaults(run=pairs_cli)
