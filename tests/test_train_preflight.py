"""Pre-flight checks and data shaping, on tokenizers and datasets only (no weights): chat templates from the
wild (TRL ships copies of Qwen's, Llama's and Gemma's), Arrow's merged message structs, the token-length audit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trl
from datasets import Dataset, DatasetDict, load_from_disk

from distill import preflight, train_data
from distill.recipe import resolve_chat_template
from eval.io import DistillError

TRL_TEMPLATES = Path(trl.__file__).parent / "chat_templates"


@pytest.fixture
def tok(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def with_tokens(tok, template: str, *, eos: str, bos: str | None, extra: list[str]):
    tok.add_tokens(extra + [t for t in (eos, bos) if t], special_tokens=True)
    tok.eos_token = eos
    if bos:
        tok.bos_token = bos
    tok.chat_template = template
    return tok


def check(tok, stop_ids=None):
    preflight.check_chat_template(tok, source="test-template", stop_ids=stop_ids or {tok.eos_token_id})


@pytest.mark.parametrize("name", ["qwen2_5.jinja", "qwen3.jinja"])
def test_qwen_templates_pass(tok, name):
    tok.chat_template = (TRL_TEMPLATES / name).read_text()
    check(tok)


def test_distill_templates_pass(tok):
    tok.chat_template = resolve_chat_template("hermes_tool")[0]
    check(tok)
    gemma = with_tokens(
        tok,
        resolve_chat_template("gemma3_tool")[0],
        eos="<eos>",
        bos="<bos>",
        extra=["<start_of_turn>", "<end_of_turn>"],
    )
    # gemma-3 stops on <end_of_turn> (its generation_config), not on its tokenizer's <eos>
    with pytest.raises(DistillError, match="does not end with a stop token"):
        check(gemma)
    check(gemma, stop_ids={gemma.eos_token_id, gemma.convert_tokens_to_ids("<end_of_turn>")})


def test_llama_template_passes_with_llama_tokens(tok):
    llama = with_tokens(
        tok,
        (TRL_TEMPLATES / "llama3_2.jinja").read_text(),
        eos="<|eot_id|>",
        bos="<|begin_of_text|>",
        extra=["<|start_header_id|>", "<|end_header_id|>"],
    )
    check(llama)


def test_templates_without_tool_support_are_refused_with_the_fix(tok):
    tok.chat_template = (TRL_TEMPLATES / "gemma3.jinja").read_text()  # Gemma 3's own: no tools, no tool role
    with pytest.raises(
        DistillError,
        match=r"test-template: the chat template fails on a tool-call conversation.*"
        r"Conversation roles must alternate.*set chat_template: hermes_tool",
    ):
        check(tok)
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )  # plain ChatML
    with pytest.raises(DistillError) as e:
        check(tok)
    for problem in ("tools are not rendered", "tool call is not rendered"):
        assert problem in str(e.value)
    tok.chat_template = None
    with pytest.raises(DistillError, match="has no chat template"):
        check(tok)


def test_double_encoded_arguments_are_refused(tok):
    tok.chat_template = resolve_chat_template("hermes_tool")[0].replace(
        "{{- tool_call.arguments | tojson }}", "{{- tool_call.arguments | tojson | tojson }}"
    )
    with pytest.raises(DistillError, match="arguments are rendered as a quoted JSON string"):
        check(tok)


def test_a_turn_without_stop_token_is_refused(tok):
    tok.chat_template = resolve_chat_template("hermes_tool")[0].replace(
        "{{- '<|im_end|>\\n' }}\n        {%- endgeneration %}", "{{- '\\n' }}\n        {%- endgeneration %}"
    )
    with pytest.raises(DistillError, match="would never learn to stop"):
        check(tok)


# --- data shaping ---------------------------------------------------------------------------------------------


def test_for_stage_gives_templates_the_messages_as_written(tiny_pairs_dir, tok):
    raw = load_from_disk(str(tiny_pairs_dir))["train"]
    rows = train_data.for_stage(raw, "dpo")
    assert rows.column_names == ["prompt", "chosen", "rejected", "tools"]
    weather = rows[0]  # a get_weather call; other rows call calculate_area(base, height)
    arguments = weather["chosen"][0]["tool_calls"][0]["function"]["arguments"]
    assert isinstance(arguments, dict) and set(arguments) == {"city", "unit"}, "an object, only its own keys"
    assert weather["chosen"][0]["content"] is None, "content: null stays"
    assert set(weather["rejected"][0]) == {"role", "content"}, "no tool_calls: None on a prose answer"
    assert all(set(m) == {"role", "content"} for m in weather["prompt"])
    # Arrow gave the raw rows every key any row had: what Llama's template trips on
    assert "tool_calls" in raw[0]["rejected"][0] and raw[0]["rejected"][0]["tool_calls"] is None

    qwen = (TRL_TEMPLATES / "qwen2_5.jinja").read_text()
    tools = json.loads(weather["tools"])
    rendered = tok.apply_chat_template(
        weather["prompt"] + weather["chosen"], tools=tools, tokenize=False, chat_template=qwen
    )
    assert '"arguments": {"city": ' in rendered
    raw_rendered = tok.apply_chat_template(
        raw[0]["prompt"] + raw[0]["chosen"], tools=tools, tokenize=False, chat_template=qwen
    )
    assert '"arguments": "{\\"city\\"' in raw_rendered, "uncleaned, Qwen's template double-encodes arguments"
    llama = (
        TRL_TEMPLATES / "llama3_2.jinja"
    ).read_text()  # any message with a tool_calls key is a call to it
    rendered = tok.apply_chat_template(
        weather["prompt"] + weather["rejected"], tools=tools, tokenize=False, chat_template=llama
    )
    assert rendered.endswith(
        "assistant<|end_header_id|>\n\n" + weather["rejected"][0]["content"] + "<|eot_id|>"
    )


def test_for_stage_sft_formats(tiny_pairs_dir):
    raw = load_from_disk(str(tiny_pairs_dir))["train"]
    completion = train_data.for_stage(raw, "sft", "completion")
    messages = train_data.for_stage(raw, "sft", "messages")
    assert completion.column_names == ["prompt", "completion", "tools"]
    assert messages.column_names == ["messages", "tools"]
    assert messages[5]["messages"] == completion[5]["prompt"] + completion[5]["completion"]
    assert completion[5]["completion"][0]["role"] == "assistant"


def test_bad_arguments_and_bad_datasets_name_the_row_or_column(tmp_path, tiny_pairs_dir):
    raw = load_from_disk(str(tiny_pairs_dir))["train"].to_list()
    raw[3]["chosen"][0]["tool_calls"][0]["function"]["arguments"] = '{"amount": 3,'
    with pytest.raises(DistillError, match=r"row 3 \(task tiny_3\): tool-call arguments are not valid JSON"):
        train_data.for_stage(Dataset.from_list(raw), "dpo")

    data = load_from_disk(str(tiny_pairs_dir))
    with pytest.raises(DistillError, match=r"no split 'validation' \(it has train, test\)"):
        train_data.get_split(data, "validation", "pairs")
    with pytest.raises(DistillError, match="lacks column"):
        train_data.get_split(DatasetDict(train=data["train"].remove_columns("rejected")), "train", "pairs")
    nested = data["train"].map(lambda r: {"tools2": json.loads(r["tools"])}).remove_columns("tools")
    with pytest.raises(DistillError, match="column 'tools' must hold JSON strings"):
        train_data.get_split(DatasetDict(train=nested.rename_column("tools2", "tools")), "train", "pairs")
    with pytest.raises(DistillError, match="neither a local folder nor a loadable Hub dataset"):
        train_data.load_pairs(str(tmp_path / "missing" / "pairs"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DistillError, match="not a folder written by save_to_disk"):
        train_data.load_pairs(str(tmp_path / "empty"))


# --- token-length audit ---------------------------------------------------------------------------------------


def test_percentiles():
    assert preflight.percentiles(list(range(1, 101))) == {
        "p50": 50.5,
        "p90": 90.1,
        "p99": 99.0,
        "max": 100,
        "mean": 50.5,
    }
    assert preflight.percentiles([7])["p99"] == 7


def _dpo_rows(tiny_pairs_dir):
    return train_data.for_stage(load_from_disk(str(tiny_pairs_dir))["train"], "dpo")


def test_audit_measures_what_the_trainer_tokenizes(tiny_pairs_dir, tok):
    rows = _dpo_rows(tiny_pairs_dir).select([1])
    row = rows[0]
    tools = json.loads(row["tools"])
    prompt = tok.apply_chat_template(row["prompt"], tools=tools, add_generation_prompt=True)
    full = tok.apply_chat_template(row["prompt"] + row["chosen"], tools=tools)
    prompt, full = preflight._ids(prompt), preflight._ids(full)
    audit = preflight.audit_lengths(
        rows, tok, stage="dpo", max_length=4096, truncation_mode="keep_start", max_truncated_share=0.0
    )
    assert full[: len(prompt)] == prompt
    assert audit["prompt"]["max"] == len(prompt) and audit["chosen"]["max"] == len(full) - len(prompt)
    assert audit["truncated_rows"] == 0 and audit["measured"] == 1


def test_audit_fails_loudly_when_pairs_would_lose_completion_tokens(tiny_pairs_dir, tok):
    rows = _dpo_rows(tiny_pairs_dir)
    full = preflight.audit_lengths(
        rows, tok, stage="dpo", max_length=100_000, truncation_mode="keep_start", max_truncated_share=0.0
    )
    cut = int(full["total"]["p50"])
    expected = sum(1 for t in _totals(rows, tok) if t > cut)
    with pytest.raises(DistillError) as e:
        preflight.audit_lengths(
            rows, tok, stage="dpo", max_length=cut, truncation_mode="keep_start", max_truncated_share=0.05
        )
    assert f"{expected} of 24 measured train rows" in str(e.value) and "max_truncated_share=0.05" in str(
        e.value
    )
    allowed = preflight.audit_lengths(
        rows, tok, stage="dpo", max_length=cut, truncation_mode="keep_start", max_truncated_share=1.0
    )
    assert allowed["truncated_rows"] == expected
    # keep_end cuts the prompt's head: completions survive while they alone fit
    kept = preflight.audit_lengths(
        rows, tok, stage="dpo", max_length=cut, truncation_mode="keep_end", max_truncated_share=0.0
    )
    assert kept["truncated_rows"] == 0
    sampled = preflight.audit_lengths(
        rows,
        tok,
        stage="dpo",
        max_length=100_000,
        truncation_mode="keep_start",
        max_truncated_share=0.0,
        max_rows=5,
    )
    assert sampled["measured"] == 5 and sampled["rows"] == 24


def _totals(rows, tok):
    out = []
    for r in rows:
        tools = json.loads(r["tools"])
        out.append(
            max(
                len(preflight._ids(tok.apply_chat_template(r["prompt"] + r[c], tools=tools)))
                for c in ("chosen", "rejected")
            )
        )
    return out


def test_audit_names_a_row_the_template_cannot_render(tiny_pairs_dir, tok):
    tok.chat_template = (TRL_TEMPLATES / "llama3_2.jinja").read_text()  # one call per turn only
    rows = _dpo_rows(tiny_pairs_dir)
    with pytest.raises(
        DistillError, match=r"split 'train' row 2: the chat template fails on it.*single tool-calls"
    ):
        preflight.audit_lengths(
            rows, tok, stage="dpo", max_length=4096, truncation_mode="keep_start", max_truncated_share=0.0
        )


def test_stop_token_ids_read_generation_config(tmp_path, tok):
    from transformers import GenerationConfig

    GenerationConfig(eos_token_id=[tok.eos_token_id, 7]).save_pretrained(tmp_path)
    assert preflight.stop_token_ids(tok, str(tmp_path)) == {tok.eos_token_id, 7}


def test_run_json_config_masks_tokens_at_any_depth():
    from trl import DPOConfig

    from distill.run_info import config_dict

    args = DPOConfig(
        output_dir="x",
        use_cpu=True,
        bf16=False,
        hub_token="hf_abcdefghijklmnop",
        model_init_kwargs={"token": "hf_abcdefghijklmnop", "revision": "main"},
    )
    config = config_dict(args)
    assert "hf_abcdefghijklmnop" not in json.dumps(config)
    assert config["hub_token"] == "<redacted>" and config["model_init_kwargs"]["revision"] == "main"
