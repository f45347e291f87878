"""Pre-flight checks that run on the tokenizer alone, before any weight is loaded.

    check_chat_template(tokenizer, source="Qwen/Qwen2.5-0.5B-Instruct", stop_ids={151645})
    audit = audit_lengths(rows, tokenizer, stage="dpo", max_length=2048, truncation_mode="keep_start",
                          max_truncated_share=0.01)
    audit["truncated_share"], audit["prompt"]["p99"]

1. The chat template must render a tool-call conversation: the tools listed, an assistant call with dict
   arguments and `content: null` rendered as a call (name, keys, values; not a quoted string, not "None"), a
   `tool` message, and an end-of-turn token the model stops on. Templates without tool support drop the call
   silently and the student learns to answer with nothing; the fix is the recipe's `chat_template`.
2. A token-length audit: prompt and completion lengths as the trainer will tokenize them (TRL's own prefix
   rule), percentiles against `max_length`, and a refusal to start when more than `max_truncated_share` of
   the pairs would lose completion tokens, which TRL truncates (DPO) or drops (SFT) without a word. Text-form
   DPO rows (`distill pairs --trim-shared-prefix`: prompt, chosen and rejected already rendered) are measured
   as TRL's text path tokenizes them (the tokenizer called on the strings, EOS appended to an answer without
   it), and refused when their prompts lack this tokenizer's assistant-turn opening (rendered with another
   family's chat template).
"""

from __future__ import annotations

import json
import logging

from trl.data_utils import common_prefix_length  # TRL's own rule for where a completion starts

from eval.io import DistillError, percentile

logger = logging.getLogger(__name__)

CHECK_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather for a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city"],
            },
        },
    },
]
CHECK_USER = {"role": "user", "content": "What's the weather in Paris in celsius?"}
CHECK_CALL = {
    "role": "assistant",
    "content": None,
    "tool_calls": [
        {
            "type": "function",
            "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}},
        }
    ],
}
CHECK_RESULT = {"role": "tool", "name": "get_weather", "content": '{"temperature": 21, "unit": "celsius"}'}
CHECK_ANSWER = {"role": "assistant", "content": "It is 21 degrees celsius in Paris."}
FIX = "set chat_template: hermes_tool (or another tool-capable template) in the recipe"


def _render(tokenizer, messages, **kwargs):
    return tokenizer.apply_chat_template(
        messages, tools=kwargs.pop("tools", CHECK_TOOLS), tokenize=False, **kwargs
    )


def check_chat_template(tokenizer, *, source: str, stop_ids: set[int]) -> None:
    """Raise DistillError naming `source` (where the template came from) unless it renders a tool-call
    conversation as a student must learn it."""
    if not tokenizer.chat_template:
        raise DistillError(f"{source}: the tokenizer has no chat template; {FIX}")
    try:
        prompt = _render(tokenizer, [CHECK_USER], add_generation_prompt=True)
        call = _render(tokenizer, [CHECK_USER, CHECK_CALL])
        full = _render(tokenizer, [CHECK_USER, CHECK_CALL, CHECK_RESULT, CHECK_ANSWER])
    except Exception as e:  # jinja's TemplateError, or a TypeError inside a template that assumed other input
        raise DistillError(
            f"{source}: the chat template fails on a tool-call conversation ({type(e).__name__}: {e}); {FIX}"
        ) from None
    completion = call[common_prefix_length(prompt, call) :]
    problems = []
    if "Get the current weather" not in prompt:
        problems.append("the tools are not rendered into the prompt")
    if "get_weather" not in completion:
        problems.append("the assistant's tool call is not rendered")
    elif '\\"city\\"' in completion:
        problems.append("the call's arguments are rendered as a quoted JSON string")
    elif not ('"city"' in completion and "Paris" in completion and "celsius" in completion):
        problems.append("the call's arguments are not rendered as a JSON object")
    if "None" in completion:
        problems.append("content: null is rendered as the text 'None'")
    if "temperature" not in full[len(call) :] or "21 degrees" not in full:
        problems.append("the tool result or the answer after it is not rendered")
    ids = tokenizer.apply_chat_template([CHECK_USER, CHECK_CALL], tools=CHECK_TOOLS, tokenize=True)
    prompt_ids = tokenizer.apply_chat_template(
        [CHECK_USER], tools=CHECK_TOOLS, tokenize=True, add_generation_prompt=True
    )
    ids, prompt_ids = _ids(ids), _ids(prompt_ids)
    if not stop_ids & set(ids[common_prefix_length(prompt_ids, ids) :]):
        names = [tokenizer.convert_ids_to_tokens(i) for i in sorted(stop_ids)]
        problems.append(
            f"the assistant turn does not end with a stop token ({', '.join(names)}), so the "
            "student would never learn to stop"
        )
    if problems:
        raise DistillError(
            f"{source}: the chat template is not fit for tool calling: {'; '.join(problems)}; {FIX}"
        )


def _ids(out) -> list[int]:
    # apply_chat_template returns a list of ids, or a BatchEncoding in newer transformers.
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def assistant_opening(tokenizer) -> str:
    """The text the chat template puts before an assistant answer (`<|im_start|>assistant\\n` for ChatML): the
    generation prompt as far as a rendered conversation shares it, which is where `distill pairs
    --trim-shared-prefix` ends an untrimmed text prompt. "" when the template does not render it that way."""
    probe = [{"role": "user", "content": "Hi"}]
    try:
        alone = tokenizer.apply_chat_template(probe, tokenize=False)
        head = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(probe + [{"role": "assistant", "content": "Hello"}], tokenize=False)
    except Exception:  # noqa: BLE001 - a template that fails here has failed check_chat_template already
        return ""
    end = common_prefix_length(head, full)
    return head[len(alone) : end] if head.startswith(alone) and end > len(alone) else ""


def _text_lengths(tokenizer, row: dict, comp_cols: list[str]) -> tuple[list[int], dict[str, list[int]]]:
    """Ids of a text-form row as TRL's DPOTrainer makes them: EOS appended to an answer that does not end with
    it, then the tokenizer on prompt and on prompt + answer (special tokens added, as TRL's text path does)."""
    eos = tokenizer.eos_token or ""

    def answer(text: str) -> str:
        return text if not eos or text.endswith(eos) else text + eos

    prompt = _ids(tokenizer(row["prompt"]))
    return prompt, {c: _ids(tokenizer(row["prompt"] + answer(row[c]))) for c in comp_cols}


def percentiles(values: list[int]) -> dict:
    if not values:
        return {"p50": 0, "p90": 0, "p99": 0, "max": 0, "mean": 0.0}
    return {
        "p50": round(percentile(values, 0.50), 1),
        "p90": round(percentile(values, 0.90), 1),
        "p99": round(percentile(values, 0.99), 1),
        "max": max(values),
        "mean": round(sum(values) / len(values), 1),
    }


def audit_lengths(
    rows,
    tokenizer,
    *,
    stage: str,
    max_length: int,
    truncation_mode: str,
    max_truncated_share: float,
    max_rows: int = 0,
    split: str = "train",
) -> dict:
    """Token lengths of `rows` (shaped by train_data.for_stage) as TRL will tokenize them; raise DistillError
    when more than `max_truncated_share` of them would lose completion tokens at `max_length`."""
    n_total = len(rows)
    if n_total == 0:
        raise DistillError(f"split {split!r} is empty")
    # An even spread keeps the sample's shape when rows are ordered by task or source.
    idx = (
        range(n_total)
        if not max_rows or n_total <= max_rows
        else [i * n_total // max_rows for i in range(max_rows)]
    )
    comp_cols = (
        ["chosen", "rejected"]
        if stage == "dpo"
        else (["completion"] if "completion" in rows.column_names else [])
    )
    prompt_lens, comp_lens, totals = [], {c: [] for c in comp_cols}, []
    lost_rows = dropped = 0
    text_form = stage == "dpo" and isinstance(rows[0]["prompt"], str)
    opening = assistant_opening(tokenizer) if text_form else ""
    for i in idx:
        row = rows[i]
        tools = json.loads(row["tools"]) if isinstance(row["tools"], str) else row["tools"]
        if text_form and opening and opening not in row["prompt"]:
            raise DistillError(
                f"split {split!r} row {i}: the text-form prompt lacks this chat template's assistant-turn opening "
                f"{opening!r}, so it was rendered with another student's chat template; text-form rows (`distill "
                "pairs --trim-shared-prefix`) train the student whose template rendered them: run `distill pairs` "
                "again with --policy-adapter (or --policy-model and --chat-template) of this student"
            )
        try:
            if text_form:
                p, fulls = _text_lengths(tokenizer, row, comp_cols)
            elif comp_cols:
                p = _ids(
                    tokenizer.apply_chat_template(
                        row["prompt"], tools=tools, tokenize=True, add_generation_prompt=True
                    )
                )
                fulls = {
                    c: _ids(tokenizer.apply_chat_template(row["prompt"] + row[c], tools=tools, tokenize=True))
                    for c in comp_cols
                }
            else:  # sft messages: the prompt is every turn before the last (the chosen answer)
                p = _ids(
                    tokenizer.apply_chat_template(
                        row["messages"][:-1], tools=tools, tokenize=True, add_generation_prompt=True
                    )
                )
                fulls = {
                    "completion": _ids(
                        tokenizer.apply_chat_template(row["messages"], tools=tools, tokenize=True)
                    )
                }
        except Exception as e:
            what = "the tokenizer" if text_form else "the chat template"
            raise DistillError(f"split {split!r} row {i}: {what} fails on it ({type(e).__name__}: {e})") from None
        prompt_len = min(common_prefix_length(p, f) for f in fulls.values())
        prompt_lens.append(prompt_len)
        lost = False
        for c, f in fulls.items():
            comp = len(f) - prompt_len
            comp_lens.setdefault(c, []).append(comp)
            # keep_start keeps the first max_length tokens (the completion's tail goes); keep_end keeps the last
            # (the prompt's head goes, the completion only when it alone is longer than max_length).
            over = prompt_len + comp - max_length if truncation_mode == "keep_start" else comp - max_length
            lost |= over > 0
        totals.append(prompt_len + max(len(f) - prompt_len for f in fulls.values()))
        lost_rows += lost
        dropped += truncation_mode == "keep_start" and prompt_len >= max_length
    n = len(prompt_lens)
    audit = {
        "split": split,
        "rows": n_total,
        "measured": n,
        "max_length": max_length,
        "truncation_mode": truncation_mode,
        "prompt": percentiles(prompt_lens),
        **{c: percentiles(v) for c, v in comp_lens.items()},
        "total": percentiles(totals),
        "truncated_rows": lost_rows,
        "truncated_share": round(lost_rows / n, 4),
        "prompt_fills_max_length": dropped,
    }
    logger.info(
        "token-length audit (%s, %d of %d rows, max_length %d):%s",
        split,
        n,
        n_total,
        max_length,
        "".join(
            f"\n  {k:<10} p50 {v['p50']:>6} p90 {v['p90']:>6} p99 {v['p99']:>6} max {v['max']:>6}"
            for k, v in audit.items()
            if isinstance(v, dict)
        ),
    )
    if lost_rows / n > max_truncated_share:
        raise DistillError(
            f"{lost_rows} of {n} measured {split} rows ({100 * lost_rows / n:.1f}%) would lose completion tokens "
            f"at max_length={max_length} (truncation_mode {truncation_mode}; prompt+completion p90 "
            f"{audit['total']['p90']}, p99 {audit['total']['p99']}, max {audit['total']['max']}; "
            f"{dropped} prompts alone fill max_length); allowed: max_truncated_share={max_truncated_share}. "
            f"Raise max_length (to about {audit['total']['p99']} for 1% loss) or max_truncated_share, or shorten "
            "the prompts (fewer tool schemas)"
        )
    return audit


def stop_token_ids(tokenizer, model_name_or_path: str, revision: str | None = None) -> set[int]:
    """Token ids generation stops on: the tokenizer's eos and the model's generation_config eos ids (gemma-3
    stops on <end_of_turn>, which is not its tokenizer's eos). Reads a small JSON file, no weights."""
    from transformers import GenerationConfig

    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    try:
        eos = GenerationConfig.from_pretrained(model_name_or_path, revision=revision).eos_token_id
    except (OSError, ValueError):
        eos = None
    ids |= set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    return ids
