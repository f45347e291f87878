"""What can be checked of the `vllm` backend without vLLM (request building, output mapping, the import
guard), and the prompts for servers and base models that take no `tools` (data_gen.prompting)."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

from data_gen.backends.base import Request, Sampling, derive_seed
from data_gen.backends.vllm_backend import build_engine_inputs, group_by_task, results_from_outputs
from data_gen.prompting import (
    STOP,
    completion_prompt,
    cut_at_stop,
    tools_system_prompt,
    with_tools_in_prompt,
)
from eval.io import DistillError
from eval.parse import parse_output

TOOLS = [{"type": "function", "function": {"name": "search", "description": "Search.",
                                           "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}}]


def reqs(spec):
    """[(task_id, sample), ...] -> Requests with derived seeds."""
    return [Request(t, s, [{"role": "user", "content": f"about {t}"}], TOOLS, derive_seed(5, t, s)) for t, s in spec]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_one_engine_prompt_per_task_with_n_missing_samples(tokenizer):
    # a resumed run: task a misses samples 1 and 3, task b all of 0..2
    groups = list(group_by_task(reqs([("a", 1), ("a", 3), ("b", 0), ("b", 1), ("b", 2)])))
    assert [[(r.task_id, r.sample) for r in g] for g in groups] == [[("a", 1), ("a", 3)], [("b", 0), ("b", 1), ("b", 2)]]
    prompts, params = build_engine_inputs(groups, tokenizer, Sampling(temperature=0.6, top_p=0.9, max_new_tokens=64),
                                          make_params=dict)
    assert [p["n"] for p in params] == [2, 3]
    assert params[0] == {"n": 2, "temperature": 0.6, "top_p": 0.9, "max_tokens": 64, "seed": derive_seed(5, "a", 1),
                         "skip_special_tokens": False}
    # token ids of the chat template rendered with the tools, without a second BOS
    text = tokenizer.apply_chat_template(groups[0][0].messages, tools=TOOLS, add_generation_prompt=True, tokenize=False)
    assert prompts[0] == {"prompt_token_ids": tokenizer(text, add_special_tokens=False)["input_ids"]}
    assert tokenizer.decode(prompts[1]["prompt_token_ids"]).endswith("about b<|im_end|>\n<|im_start|>assistant\n")


def test_completion_prompt_for_a_model_without_template_stops_at_the_next_section():
    class Bare:  # a base model's tokenizer: no chat template; records how it was called
        chat_template = None

        def __call__(self, text, add_special_tokens):
            return {"input_ids": [len(text), int(add_special_tokens)]}

    prompts, params = build_engine_inputs([reqs([("a", 0)])], Bare(), Sampling(), make_params=dict)
    assert params[0]["stop"] == [STOP]
    assert prompts[0]["prompt_token_ids"][1] == 1  # the model's own BOS is added to a plain-text prompt


def test_outputs_map_back_to_their_requests():
    groups = list(group_by_task(reqs([("a", 1), ("a", 3), ("b", 0)])))
    comp = lambda i, text, n: SimpleNamespace(index=i, text=text, token_ids=list(range(n)), finish_reason="stop")  # noqa: E731
    outputs = [
        SimpleNamespace(prompt_token_ids=[1] * 30, outputs=[comp(1, "second<|im_end|>", 4), comp(0, "first", 3)]),
        SimpleNamespace(prompt_token_ids=[1] * 20, outputs=[comp(0, "only", 2)]),
    ]
    results = results_from_outputs(groups, outputs, 1.5, ["<|im_end|>"])
    assert [(r.request.task_id, r.request.sample, r.raw, r.completion_tokens, r.prompt_tokens) for r in results] == [
        ("a", 1, "first", 3, 30), ("a", 3, "second", 4, 30), ("b", 0, "only", 2, 20)]
    assert all(r.latency_s == 1.5 and r.finish_reason == "stop" for r in results)


def test_vllm_backend_without_vllm_says_how_to_get_it(monkeypatch):
    from data_gen.backends.vllm_backend import VLLMBackend

    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError, installed or not
    with pytest.raises(DistillError, match=r"pip install 'distill\[vllm\]'"):
        VLLMBackend("some/model", sampling=Sampling())


@pytest.mark.parametrize("style", ["hermes", "python"])
def test_prompt_examples_are_in_a_format_the_parser_reads(style):
    from data_gen.prompting import _SHOTS, _render_calls

    for shot in _SHOTS:
        parsed = parse_output(_render_calls(shot["calls"], style))
        assert parsed.status == "calls" and parsed.calls == shot["calls"]
    prompt = completion_prompt([{"role": "user", "content": "find cats"}], TOOLS, style)
    assert prompt.count("### Answer") == 3 and prompt.endswith("### Request\nfind cats\n### Answer\n")
    assert '"name": "search"' in prompt


def test_tools_go_into_the_system_turn():
    msgs = [{"role": "user", "content": "hi"}]
    out = with_tools_in_prompt(msgs, TOOLS)
    assert out[0] == {"role": "system", "content": tools_system_prompt(TOOLS)} and out[1:] == msgs
    assert "<tool_call>" in out[0]["content"] and '"name": "search"' in out[0]["content"]
    sys_msgs = [{"role": "system", "content": "Be brief."}, *msgs]
    out = with_tools_in_prompt(sys_msgs, TOOLS, "python")
    assert out[0]["content"].startswith("Be brief.\n\n# Tools") and "Python list" in out[0]["content"]
    assert sys_msgs[0]["content"] == "Be brief."  # the task's messages are not modified
    assert with_tools_in_prompt(msgs, []) == msgs


def test_cut_at_stop():
    assert cut_at_stop('<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>\n\n### Tools\n...') == (
        '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>', True)
    assert cut_at_stop("[f(a=1)]") == ("[f(a=1)]", False)
