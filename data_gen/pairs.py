"""Mine DPO preference pairs from verified traces: correct teacher answers against the teacher's own mistakes, the
student's mistakes (on-policy negatives) and synthetic hard negatives; or, with `on_policy`, pairs from the
student being trained alone (its own correct answers chosen where it has them).

    row {"prompt": [{"role": "user", "content": "What's the weather in Paris?"}],
         "chosen":   [{"role": "assistant", "content": null, "tool_calls": [{"type": "function",
                       "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]}],
         "rejected": [{"role": "assistant", "content": "I would use get_weather for this.", "tool_calls": null}],
         "tools": "[{\"type\": \"function\", ...}]", "task_id": "simple_python_12", "category": "simple_python",
         "chosen_source": "teacher", "rejected_source": "synthetic", "rejected_error": "no_call",
         "pair_kind": "missed_call"}

Chosen answers are strict: correct by BFCL's rules and schema-valid. Every rejected answer is verified incorrect
and labelled with its error. Calls are stored as structured messages (arguments as JSON strings, `tools` as a
JSON string: as nested structs, Arrow would merge fields across rows), so each student's own chat template renders
them in its own format at training time; malformed and prose answers stay raw text.

Every pair has a kind (`pair_kind`), by what the rejected answer got wrong:
    wrong_call         the task needs calls; rejected is a wrong or malformed call
    hallucinated_call  an irrelevance task (nothing to call); rejected calls anyway, chosen abstains
    missed_call        the task needs calls; rejected answers without one
On-policy mining samples the SFT'd student k times per training task (`distill eval --adapter RUN --samples K
--temperature 0.8`), verifies every answer, and pairs its mistakes of each kind with a verified answer; optional
filters need the policy (data_gen.policy): drop rejected answers it finds too unlikely (`max_rejected_nll`), and
move the shared beginning of near-identical calls into the prompt (`trim_shared_prefix`, text-form rows).

    rows, stats = mine_pairs(tasks, teacher_traces, student_traces, PairsConfig(synthetic=2))
    write_pairs("pairs/", rows, stats, ...)
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import json
import math
import os
import random
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from data_gen.negatives import Answer, synthetic_negatives
from data_gen.policy import PolicySpec
from eval.io import DistillError, atomic_folder, atomic_write, read_jsonl, write_json, write_jsonl
from eval.parse import CALLS, MALFORMED
from eval.tasks import Task, file_fingerprint, load_tasks
from eval.verify import ERRORS, judge, parse_trace

SOURCES = ("teacher", "student", "synthetic")
CHOSEN_SOURCES = ("student", "teacher", "gold")
CHOSEN_FROM = ("teacher", "gold", "teacher-or-gold")  # the usual values; any "-or-" chain of CHOSEN_SOURCES works
KINDS = ("wrong_call", "hallucinated_call", "missed_call")
ABSTAIN_TEXT = "None of the available functions can be used for this request."


@dataclass
class PairsConfig:
    # where chosen answers come from, in order of preference: teacher | gold | teacher-or-gold | student-or-gold ...
    chosen_from: str = "teacher"
    synthetic: int = 2  # synthetic negatives made per task
    max_pairs_per_task: int = 8
    mix: dict[str, float] = field(default_factory=lambda: {s: 1.0 for s in SOURCES})  # relative share per source
    error_weights: dict[str, float] = field(default_factory=dict)  # relative share per error type (default 1)
    test_size: float = 0.1  # share of tasks (not pairs) in the test split
    seed: int = 0
    # rejected answers only from the student's traces (mix and synthetic do not apply); the student's own correct
    # answer is the chosen one where it has one, then chosen_from
    on_policy: bool = False
    kinds: tuple[str, ...] = KINDS  # pair kinds kept (pair_kind)
    max_rejected_nll: float | None = None  # nats; drop pairs whose rejected answer is less likely under the policy
    trim_shared_prefix: bool = False  # near-identical calls: shared beginning into the prompt (text-form rows)
    trim_min_share: float = 0.5  # share of the shorter answer's tokens two calls must share to be trimmed


def chosen_priority(config: PairsConfig) -> tuple[str, ...]:
    """Sources of chosen answers, first preferred: `chosen_from` split on '-or-', the student first when on-policy."""
    order = tuple(config.chosen_from.split("-or-"))
    if not order or any(s not in CHOSEN_SOURCES for s in order) or len(set(order)) != len(order):
        raise DistillError(
            f"chosen_from: {config.chosen_from!r} is not one of {', '.join(CHOSEN_FROM)} or another '-or-' chain of "
            f"{', '.join(CHOSEN_SOURCES)} (e.g. student-or-gold)"
        )
    return order if not config.on_policy or order[0] == "student" else ("student", *(s for s in order if s != "student"))


def check_config(config: PairsConfig) -> None:
    """Bad settings as errors before any trace is read or model loaded."""
    chosen_priority(config)
    unknown = [k for k in config.kinds if k not in KINDS]
    if unknown or not config.kinds:
        raise DistillError(f"--kinds: {', '.join(unknown) or 'none given'}; pair kinds are {', '.join(KINDS)}")
    if not 0 <= config.test_size < 1:
        raise DistillError("--test-size must be in [0, 1)")
    if config.max_rejected_nll is not None and not (
        isinstance(config.max_rejected_nll, (int, float)) and math.isfinite(config.max_rejected_nll)
        and config.max_rejected_nll > 0
    ):
        raise DistillError(f"--max-rejected-nll is a positive number of nats, got {config.max_rejected_nll!r}")
    if not 0 < config.trim_min_share <= 1:
        raise DistillError(f"--trim-min-share is a share in (0, 1], got {config.trim_min_share!r}")


def pair_kind(task: Task, rejected_error: str) -> str:
    """What the rejected answer got wrong, as a pair kind (see the module docstring)."""
    if not task.expected:
        return "hallucinated_call"
    return "missed_call" if rejected_error == "no_call" else "wrong_call"


@dataclass
class _Candidate:
    key: str  # canonical form, for de-duplication
    answer: Answer  # turned into a message only if selected
    source: str
    error: str
    kind: str


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
    mix = {"student": 1.0} if config.on_policy else config.mix
    ordered = {s: _diverse(pools.get(s, []), config.error_weights, rng) for s in SOURCES if mix.get(s, 0) > 0}
    available = {s: c for s, c in ordered.items() if c}
    if not available:
        return []
    total = sum(mix[s] for s in available)
    picked = []
    for s, cands in available.items():
        quota = int(cap * mix[s] / total)
        picked += cands[:quota]
        del cands[:quota]
    for s in sorted(available, key=lambda s: -mix[s]):
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
        self.chosen: list[tuple[str, Answer, str]] = []  # (canonical key, answer, source): the ones pairs use
        self.chosen_by_source: dict[str, list[tuple[str, Answer, str]]] = defaultdict(list)  # every strict one
        self.rejected: dict[str, list[_Candidate]] = defaultdict(list)  # by source
        self._seen_rejected: set[str] = set()

    def add_chosen(self, answer: Answer, source: str, key: str | None = None) -> None:
        if not answer.calls:
            key = "text:<abstain>"
        key = key or _canonical(answer.calls, answer.text)
        bucket = self.chosen_by_source[source]
        if all(key != k for k, _, _ in bucket):
            bucket.append((key, answer, source))

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
        self.rejected[source].append(_Candidate(key, answer, source, error, pair_kind(self.task, error)))

    def add_traces(self, traces: list[dict], source: str) -> None:
        """Verify each distinct output once: strictly correct answers become chosen candidates of their source,
        wrong ones rejected."""
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
            elif schema_valid and parsed.status != MALFORMED:
                self.add_chosen(_trace_answer(trace, parsed), source, key)

    def pick_chosen(self, priority: tuple[str, ...]) -> None:
        """The chosen answers of the first source in `priority` that has any (gold: the task's expected calls,
        when they are strictly correct)."""
        for source in priority:
            if source == "gold":
                gold = gold_answer(self.task)
                correct, schema_valid, _, _ = judge(self.task, gold.parsed())
                if correct and schema_valid:
                    self.add_chosen(gold, "gold")
                else:
                    self.stats["tasks_gold_not_strictly_correct"] += 1
            if self.chosen_by_source.get(source):
                self.chosen = self.chosen_by_source[source]
                self.stats[f"chosen_from_{source}"] += 1
                return

    def keep_kinds(self, kinds: tuple[str, ...]) -> None:
        for source, cands in self.rejected.items():
            kept = [c for c in cands if c.kind in kinds]
            self.stats["rejected_kind_filtered"] += len(cands) - len(kept)
            self.rejected[source] = kept

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
            "pair_kind": cand.kind,
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
    check_config(config)
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
    pool.pick_chosen(chosen_priority(config))
    if not pool.chosen:
        stats["tasks_without_chosen"] += 1
        return
    if config.synthetic > 0 and not config.on_policy:
        calls = pool.chosen[0][1].calls or []
        for _op, answer, error, _detail in synthetic_negatives(task, calls, config.synthetic, rng):
            pool.add_rejected(answer, "synthetic", error)
    pool.drop_rejected_equal_to_chosen()
    pool.keep_kinds(config.kinds)
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
        "pair_kind": counts("pair_kind"),
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

DPO preference pairs in TRL's {"standard (text) format, rendered for one student" if "prefix_trim" in (info.get("policy_filters") or {}) else "conversational format"} with a `tools` column, mined by
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

| pair kind | pairs |
| --- | --- |
{table(summary["pair_kind"])}

| category | pairs |
| --- | --- |
{table(summary["category"])}

## Columns

{columns_text(info)}
"""
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n{body}").content


def columns_text(info: dict) -> str:
    """The card's description of the columns: conversational rows, or text rows rendered for one student."""
    filters = info.get("policy_filters") or {}
    if "prefix_trim" in filters:
        first = (f"Text form (TRL's standard preference format), rendered with the chat template of the policy "
                 f"`{filters['policy'].get('adapter') or filters['policy'].get('model')}`: `prompt` (the rendered "
                 "conversation up to the answer, plus `shared_prefix`), `chosen` and `rejected` (the rest of each "
                 "answer, ending with the end-of-turn token), `shared_prefix` (the beginning two near-identical calls "
                 "share, moved into the prompt; empty where not trimmed), `tools` (JSON string, already rendered).")
    else:
        first = ("`prompt` (messages), `chosen` and `rejected` (one assistant message each: `tool_calls` in OpenAI "
                 "form with `arguments` as a JSON string, or plain `content` for malformed and prose answers), `tools` "
                 "(JSON string of OpenAI tool definitions).")
    nll = (" `rejected_nll`: the rejected answer's negative log-likelihood under the policy, in nats." if
           "off_policy_filter" in filters else "")
    return (first + " `task_id`, `category`, `chosen_source` (`teacher` | `student` | `gold`), `rejected_source` "
            "(`teacher` | `student` | `synthetic`), `rejected_error`, `pair_kind` (`wrong_call` | "
            "`hallucinated_call` | `missed_call`)." + nll)


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
    policy: PolicySpec | None = None,
) -> dict:
    """The whole `distill pairs` job from Python: read, mine, filter with the policy, write. Returns the summary.
    The card's license is `license`, else the tasks' sources' license (BFCL: apache-2.0), else `other`."""
    config = config or PairsConfig()
    check_config(config)
    needs_policy = config.max_rejected_nll is not None or config.trim_shared_prefix
    if needs_policy and (policy is None or not (policy.model or policy.adapter)):
        raise DistillError("--max-rejected-nll and --trim-shared-prefix need the policy: --policy-adapter RUN "
                           "(and/or --policy-model BASE)")
    if config.on_policy and not student_trace_paths:
        raise DistillError("--on-policy mines the student's own answers: pass --student-traces (e.g. DIR/traces.jsonl "
                           "of `distill eval --adapter RUN --samples 4 --temperature 0.8 --out DIR`)")
    tasks = load_tasks(tasks_path)
    teacher = _read_traces(trace_paths, tasks) if trace_paths else []
    student = _read_traces(student_trace_paths, tasks) if student_trace_paths else []
    priority = chosen_priority(config)
    if not teacher and "teacher" in priority and "gold" not in priority:
        raise DistillError("no teacher traces: pass --traces, or --chosen-from gold (or teacher-or-gold)")
    rows, stats = mine_pairs(tasks, teacher, student, config)
    info = {
        "tasks": str(tasks_path),
        "tasks_fingerprint": file_fingerprint(tasks_path),
        "teacher": teacher_info(teacher),
        "student": teacher_info(student),
        "config": asdict(config),
        "license": license or sources_license(tasks_path),
    }
    if needs_policy and rows:
        info["policy_filters"] = apply_policy_filters(rows, config, policy)
        rows = info["policy_filters"].pop("rows")
    summary = write_pairs(out_dir, rows, stats, info, push_to_hub=push_to_hub, private=private)
    return summary | {"mining": stats, "policy_filters": info.get("policy_filters")}


def apply_policy_filters(rows: list[dict], config: PairsConfig, policy: PolicySpec) -> dict:
    """Drop far off-policy rejected answers, then trim shared prefixes; {"rows": kept rows, "policy": spec,
    "off_policy_filter": stats, "prefix_trim": stats} (the filters that ran)."""
    from data_gen.policy import Policy, drop_far_off_policy, to_text_rows

    loaded = Policy.load(policy, with_model=config.max_rejected_nll is not None)
    out: dict = {"policy": asdict(policy)}
    if config.max_rejected_nll is not None:
        nll = loaded.answer_nll(rows, "rejected")
        rows, out["off_policy_filter"] = drop_far_off_policy(rows, nll, config.max_rejected_nll)
        if not rows:
            raise DistillError(
                f"--max-rejected-nll {config.max_rejected_nll}: every pair's rejected answer is less likely than that "
                f"under the policy (NLL per pair kind: {json.dumps(out['off_policy_filter']['rejected_nll']['by_pair_kind'])})"
            )
    if config.trim_shared_prefix:
        rows, out["prefix_trim"] = to_text_rows(loaded.tokenizer, rows, config.trim_min_share)
    out["rows"] = rows
    return out


def _kinds(text: str | None) -> tuple[str, ...]:
    return KINDS if text is None else tuple(k.strip() for k in text.split(",") if k.strip())


def pairs_cli(args) -> int:
    explicit_sources = args.synthetic is not None or args.mix is not None
    if args.on_policy and explicit_sources:
        raise DistillError("--on-policy takes rejected answers from --student-traces only; drop --synthetic and --mix "
                           "(or leave out --on-policy to mix sources)")
    config = PairsConfig(
        chosen_from=args.chosen_from,
        synthetic=2 if args.synthetic is None else args.synthetic,
        max_pairs_per_task=args.max_pairs_per_task,
        mix={**{s: 1.0 for s in SOURCES}, **_parse_weights(args.mix, SOURCES, "--mix")},
        error_weights=_parse_weights(args.error_weights, ERRORS, "--error-weights"),
        test_size=args.test_size,
        seed=args.seed,
        on_policy=args.on_policy,
        kinds=_kinds(args.kinds),
        max_rejected_nll=args.max_rejected_nll,
        trim_shared_prefix=args.trim_shared_prefix,
        trim_min_share=args.trim_min_share,
    )
    policy = PolicySpec(model=args.policy_model, adapter=args.policy_adapter, chat_template=args.chat_template,
                        device=args.device, dtype=args.dtype, batch_size=args.policy_batch_size)
    summary = pairs(args.tasks, args.traces or [], args.out, args.student_traces, config, args.push_to_hub, args.private,
                    license=args.license, policy=policy)
    m = summary["mining"]
    print(
        f"{summary['pairs']} pairs (train {summary['splits']['train']}, test {summary['splits']['test']}) from "
        f"{m.get('tasks_with_pairs', 0)} tasks -> {args.out}/dataset (+ train.jsonl, test.jsonl, README.md)"
    )
    print("  rejected sources: " + ", ".join(f"{k} {v}" for k, v in summary["rejected_source"].items()))
    print("  rejected errors:  " + ", ".join(f"{k} {v}" for k, v in summary["rejected_error"].items()))
    print("  pair kinds:       " + ", ".join(f"{k} {v}" for k, v in summary["pair_kind"].items()))
    print("  chosen sources:   " + ", ".join(f"{k} {v}" for k, v in summary["chosen_source"].items()))
    skipped = {k: v for k, v in m.items() if k.startswith("tasks_without") or k.startswith("tasks_gold")}
    if skipped:
        print("  skipped: " + ", ".join(f"{k} {v}" for k, v in skipped.items()))
    filters = summary.get("policy_filters") or {}
    if "off_policy_filter" in filters:
        f = filters["off_policy_filter"]
        print(f"  off-policy filter: {f['rows_dropped']} of {f['rows_scored']} pairs dropped (rejected NLL > "
              f"{f['max_rejected_nll']} nats)")
    if "prefix_trim" in filters:
        f = filters["prefix_trim"]
        print(f"  shared prefix trimmed on {f['rows_trimmed']} of {f['rows']} pairs (text-form rows for this policy)")
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
        epilog="examples:\n  distill pairs --tasks tasks.jsonl --traces teacher.jsonl --student-traces student.jsonl "
        "--synthetic 2 --max-pairs-per-task 8 --mix teacher=2,student=1,synthetic=1 --out pairs/\n"
        "  # on-policy: sample the SFT'd student 4 times per training task, then mine its own mistakes\n"
        "  distill eval --adapter checkpoints/sft --tasks train.jsonl --samples 4 --temperature 0.8 --seed 0 "
        "--no-plots --out runs/sft-samples\n"
        "  distill pairs --tasks train.jsonl --on-policy --student-traces runs/sft-samples/traces.jsonl "
        "--chosen-from gold --policy-adapter checkpoints/sft --max-rejected-nll 60 --out pairs-onpolicy/\n"
        "  (docs/pairs.md, section On-policy pairs: the filters and rounds)",
    )
    p.add_argument("--tasks", required=True, help="tasks .jsonl file")
    p.add_argument("--traces", nargs="*", default=[], help="teacher traces .jsonl file(s)")
    p.add_argument("--student-traces", nargs="*", default=None, help="student traces .jsonl file(s): on-policy negatives")
    p.add_argument("--out", required=True, help="output folder (replaced atomically)")
    p.add_argument(
        "--chosen-from",
        default="teacher",
        metavar="SOURCE[-or-SOURCE...]",
        help="where chosen answers come from, first preferred: teacher (correct teacher traces), gold (the tasks' "
        "expected calls), student (the student's own correct answers), chained with -or-, e.g. teacher-or-gold, "
        "student-or-gold (default: %(default)s)",
    )
    p.add_argument("--synthetic", type=int, default=None, metavar="K",
                   help="synthetic hard negatives per task (default: 2; not with --on-policy)")
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
    o = p.add_argument_group(
        "on-policy pairs",
        "Pairs from the student being trained (docs/pairs.md, On-policy pairs). Every pair is labelled with its kind "
        "(pair_kind): wrong_call (a verified call vs a wrong or malformed call), hallucinated_call (an irrelevance "
        "task: abstention vs a call), missed_call (a verified call vs an answer without a call).",
    )
    o.add_argument("--on-policy", action="store_true",
                   help="rejected answers only from --student-traces (the student sampled K times per task, e.g. "
                   "`distill eval --adapter RUN --samples 4 --temperature 0.8`); where the student answered a task "
                   "correctly, that answer is the chosen one (chosen_source student), else --chosen-from")
    o.add_argument("--kinds", default=None, metavar="KIND[,KIND...]",
                   help=f"pair kinds to keep, of {', '.join(KINDS)} (default: all)")
    o.add_argument("--max-rejected-nll", type=float, default=None, metavar="NATS",
                   help="drop pairs whose rejected answer the policy finds less likely than this: negative "
                   "log-likelihood summed over the answer's tokens (TRL's logps/rejected, negated) above NATS. Needs "
                   "--policy-adapter; adds a rejected_nll column (default: off)")
    o.add_argument("--trim-shared-prefix", action="store_true",
                   help="for near-identical calls (both sides calls sharing --trim-min-share of the shorter one's "
                   "tokens), move the shared beginning into the prompt (Step-DPO). Writes text-form rows rendered "
                   "with the policy's chat template (a dataset for that student); needs --policy-adapter or "
                   "--policy-model")
    o.add_argument("--trim-min-share", type=float, default=0.5,
                   help="share (0-1] of the shorter answer's tokens two calls must share to be trimmed (default: "
                   "%(default)s)")
    o.add_argument("--policy-adapter", default=None, metavar="RUN",
                   help="the student the filters score with: its LoRA adapter folder (checkpoints/<run>), whose "
                   "saved tokenizer holds the chat template it trains with")
    o.add_argument("--policy-model", default=None, metavar="BASE",
                   help="the policy's base model (default: the one the adapter's run.json names)")
    o.add_argument("--chat-template", default=None,
                   help="chat template for the policy (a shipped name or a .jinja file; default: the adapter's)")
    o.add_argument("--device", default="auto", help="where the policy scores: cuda, cpu, mps or auto (default: auto)")
    o.add_argument("--dtype", default="float32", choices=["auto", "bfloat16", "float16", "float32"],
                   help="the policy's weights when scoring (default: %(default)s)")
    o.add_argument("--policy-batch-size", type=int, default=8, help="pairs per forward pass when scoring "
                   "(default: %(default)s)")
    p.add_argument("--license", default=None, help="license for the dataset card, e.g. cc-by-4.0 (default: the task "
                   "sources' license when distill knows it, e.g. apache-2.0 for BFCL; otherwise 'other')")
    p.set_defaults(run=pairs_cli)
