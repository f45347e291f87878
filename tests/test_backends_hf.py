"""The `hf` backend with the tiny local model: batched left-padded generation, chat template with tools,
the few-shot completion prompt for a model without a template, and --chat-template."""

from __future__ import annotations

import json
import shutil

import pytest

from data_gen.backends.base import Request, Sampling
from data_gen.generate import generate
from distill.testing.openai_stub import write_tasks


@pytest.fixture(scope="module")
def sharp_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with larger random weights. At its default init the tiny model says nearly the same thing
    whatever the prompt, so a padding bug would go unseen; with these weights the output depends on the
    context (right padding measurably changes it)."""
    import torch
    from transformers import AutoModelForCausalLM

    path = tmp_path_factory.mktemp("sharp")
    shutil.copytree(tiny_model_dir, path, dirs_exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(path)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.5 if "embed" in name else 0.2)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def hf_backend(sharp_model_dir):
    from data_gen.backends.hf_backend import HFBackend

    return HFBackend(str(sharp_model_dir), sampling=Sampling(temperature=0, max_new_tokens=8), batch_size=4,
                     device="cpu")


def requests_from(path):
    from eval.tasks import load_tasks

    return [Request(t.id, 0, t.messages, t.tools) for t in load_tasks(path).values()]


def test_batched_left_padded_greedy_matches_one_by_one(hf_backend, tmp_path):
    write_tasks(tmp_path / "tasks.jsonl", 4)  # prompts of four different lengths
    reqs = requests_from(tmp_path / "tasks.jsonl")
    assert hf_backend.tokenizer.padding_side == "left"
    batched = hf_backend.generate_batch(reqs)
    lengths = [r.prompt_tokens for r in batched]
    assert len(set(lengths)) == 4, "the prompts should differ in length, so the batch is padded"
    one_by_one = [hf_backend.generate_batch([r])[0] for r in reqs]
    # with left padding and the attention mask, padding changes nothing: greedy output is identical
    assert [r.raw for r in batched] == [r.raw for r in one_by_one]
    assert [r.completion_tokens for r in batched] == [r.completion_tokens for r in one_by_one]
    # ... and the comparison can fail: right padding changes this model's answers
    hf_backend.tokenizer.padding_side = "right"
    try:
        right = hf_backend.generate_batch(reqs)
    finally:
        hf_backend.tokenizer.padding_side = "left"
    assert [r.raw for r in right] != [r.raw for r in one_by_one]
    for r in batched:
        assert r.finish_reason in ("stop", "length") and 0 < r.completion_tokens <= 8
    # the prompt is the model's chat template rendered with the tools
    text = hf_backend.tokenizer.apply_chat_template(reqs[0].messages, tools=reqs[0].tools, add_generation_prompt=True,
                                                    tokenize=False)
    assert '"name": "search"' in text and lengths[0] == len(hf_backend.tokenizer(text, add_special_tokens=False)["input_ids"])


def test_generate_with_hf_writes_every_trace(hf_backend, tmp_path):
    write_tasks(tmp_path / "tasks.jsonl", 5)
    out = tmp_path / "traces.jsonl"
    hf_backend.sampling = Sampling(temperature=0.9, top_p=0.95, max_new_tokens=6, seed=0)
    try:
        summary = generate(tmp_path / "tasks.jsonl", hf_backend, out, samples=2, progress=False)
    finally:
        hf_backend.sampling = Sampling(temperature=0, max_new_tokens=8)
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted((r["task_id"], r["sample"]) for r in recs) == sorted((f"t{i}", s) for i in range(5) for s in range(2))
    assert summary.written == 10 and all(r["backend"] == "hf" and r["completion_tokens"] <= 6 for r in recs)


def test_base_model_without_chat_template_gets_the_few_shot_prompt(tiny_model_dir, tmp_path):
    from data_gen.backends.hf_backend import HFBackend
    from data_gen.prompting import STOP

    base = tmp_path / "base_model"
    shutil.copytree(tiny_model_dir, base)
    (base / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((base / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (base / "tokenizer_config.json").write_text(json.dumps(cfg))
    backend = HFBackend(str(base), sampling=Sampling(temperature=0, max_new_tokens=10), device="cpu",
                        prompt_style="python")
    assert not backend.tokenizer.chat_template
    write_tasks(tmp_path / "tasks.jsonl", 2)
    results = backend.generate_batch(requests_from(tmp_path / "tasks.jsonl"))
    assert all(STOP not in r.raw for r in results)
    # the prompt is few-shot completion text: the worked examples, then this task, ending at "### Answer"
    from data_gen.prompting import render_prompt

    req = requests_from(tmp_path / "tasks.jsonl")[0]
    text, completion = render_prompt(backend.tokenizer, req.messages, req.tools, "python")
    assert completion and text.endswith("### Request\nquestion number 0\n### Answer\n")
    assert "[get_stock_price(symbol='AAPL', exchange='NASDAQ')]" in text

    # --chat-template gives the same base model a chat template again
    template = tmp_path / "tmpl.jinja"
    template.write_text("{% for m in messages %}<<{{ m.role }}>>{{ m.content }}{% endfor %}"
                        "{% if tools %}<<tools:{{ tools | length }}>>{% endif %}<<assistant>>")
    backend = HFBackend(str(base), sampling=Sampling(temperature=0, max_new_tokens=4), device="cpu",
                        chat_template=str(template))
    text, completion = render_prompt(backend.tokenizer, req.messages, req.tools)
    assert not completion and text == "<<user>>question number 0<<tools:1>><<assistant>>"
    assert len(backend.generate_batch([req])) == 1


def test_cli_hf_backend(tiny_model_dir, tmp_path, capsys):
    from distill.cli import main

    write_tasks(tmp_path / "tasks.jsonl", 3)
    out = tmp_path / "traces.jsonl"
    argv = ["generate", "--tasks", str(tmp_path / "tasks.jsonl"), "--backend", "hf", "--model", str(tiny_model_dir),
            "--samples", "2", "--max-new-tokens", "4", "--batch-size", "4", "--device", "cpu", "--out", str(out),
            "--no-progress"]
    assert main(argv) == 0
    assert "6 new traces" in capsys.readouterr().err
    assert main(argv) == 0  # rerun: nothing left to do
    assert "0 new traces" in capsys.readouterr().err and len(out.read_text().splitlines()) == 6


def test_a_model_that_cannot_be_loaded_is_a_clear_error(tmp_path):
    from data_gen.backends.hf_backend import HFBackend
    from eval.io import DistillError

    with pytest.raises(DistillError, match="cannot load model"):
        HFBackend(str(tmp_path / "no_model_here"), sampling=Sampling(), device="cpu")
