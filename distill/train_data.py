"""Load a preference dataset (docs/tasks.md, "Preference pairs") and shape it for one training stage.

    # one row as `distill pairs` stores it: tools and tool-call arguments are JSON strings
    {"prompt": [{"role": "user", "content": "Weather in Paris?"}],
     "chosen": [{"role": "assistant", "content": null, "tool_calls": [{"type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]}],
     "rejected": [{"role": "assistant", "content": "It is sunny."}],
     "tools": "[{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", ...}}]",
     "task_id": "t1", "chosen_source": "teacher", "rejected_source": "teacher", "rejected_error": "no_call"}

    splits = load_pairs("data/pairs")                 # DatasetDict with train/test
    dpo_rows = for_stage(splits["train"], "dpo")      # prompt, chosen, rejected, tools
    sft_rows = for_stage(splits["train"], "sft")      # prompt, completion (= chosen), tools

Arrow stores a column of messages as one struct type for all rows, so every message comes back with every key any
message had (`tool_calls: None` on a user turn) and arguments stay strings. Chat templates need the messages as
written: Qwen's and Llama's render a string argument as a quoted JSON string, and Llama's treats any message with
a `tool_calls` key as a call (transformers 5.24 drops None-valued keys before rendering; 5.17 does not). So each
message column is rewritten into datasets' `Json` type (stored as JSON text, decoded per row): keys set to None
dropped (`content` kept: `content: null` is the OpenAI form of a call), arguments parsed into objects.

SFT rows are not the pairs: a task with three pairs would count three times, and irrelevance tasks (one pair each,
at most) would be outweighed. SFT trains on one row per task and distinct chosen answer, then sets the share of
no-call targets (abstentions on irrelevance prompts) among them by repeating rows of the side that is short:

    rows = for_stage(split, "sft", no_call_share=0.3, seed=0, composition=info)
    info   # {"source_rows": 1200, "distinct_rows": 555, "no_call_distinct": 200, "natural_no_call_share": 0.36,
           #  "requested_no_call_share": 0.3, "rows": 667, "no_call_rows": 200, "no_call_share": 0.2999, ...}
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

from data_gen.messages import clean_messages
from eval.io import DistillError

logger = logging.getLogger(__name__)

REQUIRED = ("prompt", "chosen", "rejected", "tools")


def load_pairs(dataset_path: str):
    """A DatasetDict from the folder `distill pairs --out` wrote (its dataset/ subfolder), a `save_to_disk`
    folder, or the Hub when no such folder exists."""
    from datasets import DatasetDict, load_dataset, load_from_disk

    path = Path(dataset_path)
    if (path / "dataset" / "dataset_dict.json").is_file():
        path = path / "dataset"
    if path.exists():
        try:
            data = load_from_disk(str(path))
        except FileNotFoundError as e:
            raise DistillError(
                f"dataset_path: {path} is not a folder written by save_to_disk ({e})"
            ) from None
        if not isinstance(data, DatasetDict):
            raise DistillError(
                f"dataset_path: {path} holds one split; expected train/test splits (a DatasetDict)"
            )
        return data
    try:
        return load_dataset(dataset_path)
    except Exception as e:  # the Hub client raises many types; all mean "could not get it"
        raise DistillError(
            f"dataset_path: {dataset_path!r} is neither a local folder nor a loadable Hub "
            f"dataset ({type(e).__name__}: {e})"
        ) from None


def get_split(data, name: str, dataset_path: str):
    if name not in data:
        raise DistillError(f"dataset_path: {dataset_path} has no split {name!r} (it has {', '.join(data)})")
    split = data[name]
    missing = [c for c in REQUIRED if c not in split.column_names]
    if missing:
        raise DistillError(
            f"dataset_path: {dataset_path} split {name!r} lacks column(s) {', '.join(missing)}; "
            "expected TRL's conversational preference format with a tools column"
        )
    tools_type = getattr(split.features["tools"], "dtype", None)
    if tools_type not in ("string", "large_string"):
        raise DistillError(
            f"dataset_path: {dataset_path}: column 'tools' must hold JSON strings (as nested "
            "structs Arrow merges the fields of different tools' schemas), got "
            f"{split.features['tools']}"
        )
    return split


def is_text_form(split) -> bool:
    """Whether the rows are text (TRL's standard preference format) rather than messages."""
    return getattr(split.features.get("prompt"), "dtype", None) in ("string", "large_string")


def _is_no_call(messages: list[dict]) -> bool:
    """An answer without a tool call: a verified chosen answer of this kind is an abstention."""
    return not any(m.get("tool_calls") for m in messages if m.get("role") == "assistant")


def _answer_key(messages: list[dict]) -> str:
    """The chosen answer's identity: its calls with arguments parsed (key order and spacing do not make two
    answers distinct), or one key for any abstention (as `distill pairs` de-duplicates its chosen answers)."""
    if _is_no_call(messages):
        return "no-call"
    calls = []
    for m in messages:
        for call in m.get("tool_calls") or []:
            fn = call.get("function") or call
            args = fn.get("arguments")
            if isinstance(args, str):
                try:
                    args = json.loads(args)
                except json.JSONDecodeError:
                    pass  # for_stage names the row when it converts it
            calls.append([fn.get("name"), args])
    return json.dumps(calls, sort_keys=True, ensure_ascii=False)


def _repeat_to(indices: list[int], n: int, rng: random.Random) -> list[int]:
    """n rows drawn from `indices` as evenly as possible: each index floor(n/len) times, the remainder a random
    subset without repeats (so no row is repeated twice more than another)."""
    whole, extra = divmod(n, len(indices))
    return indices * whole + sorted(rng.sample(indices, extra))


def sft_selection(split, no_call_share: float | None = None, seed: int = 0) -> tuple[list[int], dict]:
    """Which rows of a preference split SFT trains on, repeats included, and how they were chosen.

    One row per (task, distinct chosen answer): the first row of each. Then, when `no_call_share` is set, the
    rows whose chosen answer has no call (abstentions: on a verified dataset, irrelevance prompts) make up that
    share: the side below its share is repeated (all distinct rows are kept; nothing is dropped, except with a
    share of exactly 0 or 1, which drops the other side). A split without one of the two sides keeps its rows
    and logs a warning. Pure Python over the `task_id`, `prompt`, `tools` and `chosen` columns."""
    if no_call_share is not None and not 0.0 <= no_call_share <= 1.0:  # NaN fails both comparisons
        raise DistillError(f"sft_no_call_share must be a share between 0 and 1 (or null), got {no_call_share}")
    chosen = split["chosen"]
    if "task_id" in split.column_names:
        tasks = split["task_id"]
    else:  # no provenance column (a dataset from elsewhere): the prompt and tools name the task
        tasks = [json.dumps([p, t], sort_keys=True, default=str) for p, t in zip(split["prompt"], split["tools"], strict=True)]
    seen: set[tuple[str, str]] = set()
    calls, no_calls = [], []
    for i, (task, answer) in enumerate(zip(tasks, chosen, strict=True)):
        key = (task, _answer_key(answer))
        if key in seen:
            continue
        seen.add(key)
        (no_calls if key[1] == "no-call" else calls).append(i)
    distinct = len(calls) + len(no_calls)
    info = {
        "source_rows": len(chosen),
        "distinct_rows": distinct,
        "call_distinct": len(calls),
        "no_call_distinct": len(no_calls),
        "natural_no_call_share": round(len(no_calls) / distinct, 4) if distinct else None,
        "requested_no_call_share": no_call_share,
    }
    rng = random.Random(seed)
    keep_calls, keep_no_calls = calls, no_calls
    if no_call_share is not None and distinct:
        if no_call_share == 0.0:
            keep_no_calls = []
        elif no_call_share == 1.0:
            keep_calls = []
        elif not calls or not no_calls:
            logger.warning(
                "sft_no_call_share %.2f cannot be met: the split has %s; SFT trains on its %d distinct rows as "
                "they are",
                no_call_share,
                "no abstention (no-call) answers" if not no_calls else "no call answers",
                distinct,
            )
        elif len(no_calls) / distinct < no_call_share:
            # n / (n + calls) = share  ->  n = share * calls / (1 - share)
            keep_no_calls = _repeat_to(no_calls, round(no_call_share * len(calls) / (1 - no_call_share)), rng)
        else:
            keep_calls = _repeat_to(calls, round((1 - no_call_share) * len(no_calls) / no_call_share), rng)
    indices = sorted(keep_calls + keep_no_calls)
    info.update(
        rows=len(indices),
        no_call_rows=len(keep_no_calls),
        no_call_share=round(len(keep_no_calls) / len(indices), 4) if indices else None,
    )
    return indices, info


def for_stage(
    split,
    stage: str,
    sft_format: str = "completion",
    name: str = "train",
    *,
    no_call_share: float | None = None,
    seed: int = 0,
    composition: dict | None = None,
):
    """The columns the stage's TRL trainer reads, message columns in datasets' Json type (see module doc).
    dpo: prompt, chosen, rejected, tools. sft: prompt + completion (= chosen) with sft_format 'completion', or
    messages (= prompt + chosen) with 'messages', one row per task and distinct chosen answer with
    `no_call_share` of abstentions (see sft_selection; None keeps the natural share). `composition`, when
    given, is filled with how the SFT rows were chosen (for run.json)."""
    from datasets import Features, Json, Value

    if is_text_form(split):
        # `distill pairs --trim-shared-prefix` writes rows already rendered with one student's chat template, some
        # prompts ending inside the assistant turn: DPO takes them as they are (TRL's text preference format).
        if stage != "dpo":
            raise DistillError(
                f"split {name!r} holds text-form rows (prompt, chosen and rejected already rendered, as `distill "
                "pairs --trim-shared-prefix` writes them): they train DPO only; SFT needs conversational rows"
            )
        return split.select_columns(["prompt", "chosen", "rejected", "tools"])

    if stage == "sft":
        indices, info = sft_selection(split, no_call_share, seed)
        logger.info(
            "SFT %s rows: %d distinct (task, answer) rows of %d pairs, %d of them abstentions (natural share "
            "%s); %d rows after setting the no-call share to %s (now %s)",
            name, info["distinct_rows"], info["source_rows"], info["no_call_distinct"],
            info["natural_no_call_share"], info["rows"], no_call_share, info["no_call_share"],
        )
        if composition is not None:
            composition.update(info)
        split = split.select(indices)

    has_ids = "task_id" in split.column_names

    def convert(row, idx):
        where = f"split {name!r} row {idx}" + (f" (task {row['task_id']})" if has_ids else "")
        prompt = clean_messages(row["prompt"], where)
        chosen = clean_messages(row["chosen"], where)
        if stage == "dpo":
            return {
                "prompt": prompt,
                "chosen": chosen,
                "rejected": clean_messages(row["rejected"], where),
                "tools": row["tools"],
            }
        if sft_format == "completion":
            return {"prompt": prompt, "completion": chosen, "tools": row["tools"]}
        return {"messages": prompt + chosen, "tools": row["tools"]}

    if stage == "dpo":
        columns = ["prompt", "chosen", "rejected"]
    else:
        columns = ["prompt", "completion"] if sft_format == "completion" else ["messages"]
    features = Features({**{c: Json() for c in columns}, "tools": Value("string")})
    return split.map(
        convert,
        with_indices=True,
        remove_columns=split.column_names,
        features=features,
        desc=f"Preparing {name} rows for {stage}",
    )
