"""Load a preference dataset (DESIGN.md "Preference dataset") and shape it for one training stage.

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
"""

from __future__ import annotations

import json
from pathlib import Path

from eval.io import DistillError

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


def clean_messages(messages: list[dict], where: str) -> list[dict]:
    out = []
    for message in messages:
        message = {k: v for k, v in message.items() if v is not None or k == "content"}
        if message.get("tool_calls"):
            calls = []
            for call in message["tool_calls"]:
                fn = dict(call.get("function") or call)
                if isinstance(fn.get("arguments"), str):
                    try:
                        fn["arguments"] = json.loads(fn["arguments"])
                    except json.JSONDecodeError as e:
                        raise DistillError(
                            f"{where}: tool-call arguments are not valid JSON ({e.msg}): "
                            f"{fn['arguments'][:80]!r}"
                        ) from None
                calls.append({**call, "function": fn} if "function" in call else fn)
            message["tool_calls"] = calls
        out.append(message)
    return out


def for_stage(split, stage: str, sft_format: str = "completion", name: str = "train"):
    """The columns the stage's TRL trainer reads, message columns in datasets' Json type (see module doc).
    dpo: prompt, chosen, rejected, tools. sft: prompt + completion (= chosen) with sft_format 'completion', or
    messages (= prompt + chosen) with 'messages'."""
    from datasets import Features, Json, Value

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
