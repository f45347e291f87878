"""`distill eval` end to end on the tiny local model with a LoRA adapter: every file written, real PNGs,
summary.md's numbers equal report.json's, the adapter really applied, resume, and a folder that evaluates
something else refused."""

from __future__ import annotations

import hashlib
import json
import re
import shutil

import pytest

from distill.cli import main
from distill.testing.openai_stub import Fault, StubServer
from distill.testing.openai_stub import write_tasks as write_search_tasks
from distill.testing.report_builders import write_tasks

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FILES = ("traces.jsonl", "eval.json", "report.json", "verdicts.jsonl", "summary.md", "accuracy_by_category.png",
         "errors.png")


def eval_args(adapter, tasks, out, *extra):
    return ["eval", "--adapter", str(adapter), "--tasks", str(tasks), "--out", str(out), "--max-new-tokens", "12",
            "--batch-size", "4", "--device", "cpu", "--no-progress", *map(str, extra)]


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    # The tiny model answers in noise: no call, which is wrong on `simple` and right on `irrelevance`, so the
    # report has numbers other than 0 and 1.
    return write_tasks(tmp_path_factory.mktemp("eval_tasks") / "tasks.jsonl", {"simple": 4, "irrelevance": 3})


@pytest.fixture(scope="module")
def evaluated(tasks, tiny_adapter_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "eval"
    assert main(eval_args(tiny_adapter_dir, tasks, out)) == 0
    return out


def _report_numbers(report: dict) -> set[str]:
    """Every way summary.md may print a number of the report: as written, as an integer, or as a percentage."""
    out = set()

    def walk(v):
        if isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out.update({str(v), f"{100 * v:.1f}"})
            if float(v).is_integer():
                out.add(str(int(v)))

    walk(report)
    out.update(f"{100 * k / report['n']:.1f}" for k in report["errors"].values())  # the error mix's shares
    return out


def test_eval_writes_every_file_and_summary_matches_report(evaluated, tasks, tiny_adapter_dir, tiny_model_dir):
    for name in FILES:
        assert (evaluated / name).is_file() and (evaluated / name).stat().st_size > 0, name
    from matplotlib import image as mpimg
    from PIL import Image

    for png in ("accuracy_by_category.png", "errors.png"):
        assert (evaluated / png).read_bytes()[:8] == PNG_SIGNATURE
        with Image.open(evaluated / png) as im:
            im.verify()
        pixels = mpimg.imread(evaluated / png)
        assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100 and pixels.std() > 0

    report = json.loads((evaluated / "report.json").read_text())
    traces = [json.loads(line) for line in (evaluated / "traces.jsonl").read_text().splitlines()]
    verdicts = [json.loads(line) for line in (evaluated / "verdicts.jsonl").read_text().splitlines()]
    assert len(traces) == len(verdicts) == report["n"] == 7
    # the student: base model from the adapter's run.json, the adapter and the exact weights scored
    assert report["model"] == str(tiny_model_dir) and report["adapter"] == str(tiny_adapter_dir)
    digest = hashlib.sha256((tiny_adapter_dir / "adapter_model.safetensors").read_bytes()).hexdigest()
    assert report["adapter_fingerprint"] == "sha256:" + digest
    assert report["data_version"] == "bfcl-eval==2026.3.23"
    assert set(report["by_category"]) == {"simple", "irrelevance"}
    assert 0 < report["accuracy"] < 1, "the noise answers should be right on irrelevance and wrong elsewhere"
    assert report["accuracy"] == round(sum(v["correct"] for v in verdicts) / 7, 6)
    # throughput: per-example latency from the traces, and the wall-clock rate of the batched run
    tp, gen = report["throughput"], report["generation"]
    assert tp["traces_timed"] == 7 and 0 < tp["latency_p50_s"] <= tp["latency_p95_s"]
    assert gen["backend"] == "hf" and gen["batch_size"] == 4 and gen["traces_generated"] == 7 and gen["missing"] == 0
    assert gen["completion_tokens"] == sum(t["completion_tokens"] for t in traces) > 0
    assert gen["completion_tokens_per_s"] == round(gen["completion_tokens"] / gen["wall_s"], 2)
    assert gen["sampling"]["temperature"] == 0.0  # eval is greedy by default
    assert gen["ran_on"] == ["cpu float32"]  # --device cpu; the tiny model's weights are float32

    md = (evaluated / "summary.md").read_text()
    pct = lambda x: f"{100 * x:.1f}%"  # noqa: E731
    assert f"| accuracy (BFCL rules) | {pct(report['accuracy'])} |" in md
    assert f"| strict accuracy (correct and schema-valid) | {pct(report['strict_accuracy'])} |" in md
    assert f"| schema-valid rate | {pct(report['schema_valid_rate'])} |" in md
    for cat, c in report["by_category"].items():
        assert (f"| {cat} | {c['n']} | {pct(c['accuracy'])} | {pct(c['strict_accuracy'])} | "
                f"{pct(c['schema_valid_rate'])} |") in md
    for err, k in report["errors"].items():
        assert (f"| {err} | {k} | {pct(k / report['n'])} |" in md) == (k > 0)
    assert f"Latency p50 {tp['latency_p50_s']} s, p95 {tp['latency_p95_s']} s" in md
    assert f"{gen['completion_tokens']} completion tokens in {gen['wall_s']} s, {gen['completion_tokens_per_s']} tokens/s" in md
    assert "(hf backend, batch size 4, on cpu float32)." in md
    # ... and no number in the summary that is not the report's (paths and the fingerprint aside)
    text = re.sub(r"`[^`]*`|\(sha256:[0-9a-f]+\)|^# .*$", "", md, flags=re.M)
    printed = re.findall(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.]*\w)", text)
    assert printed and set(printed) <= _report_numbers(report), set(printed) - _report_numbers(report)


def test_adapter_changes_the_answers_and_brings_its_tokenizer(evaluated, tasks, tiny_adapter_dir, tiny_model_dir, tmp_path):
    from data_gen.backends.base import Sampling
    from data_gen.backends.hf_backend import HFBackend
    from distill.evaluate import evaluate

    sampling = Sampling(temperature=0, max_new_tokens=12)
    base = HFBackend(str(tiny_model_dir), sampling=sampling, batch_size=4, device="cpu")
    report, _ = evaluate(tasks, base, tmp_path / "base", plots=False, progress=False)
    assert report["adapter"] is None and report["adapter_fingerprint"] is None
    raw = lambda folder: {t["task_id"]: t["raw"] for t in map(json.loads, (folder / "traces.jsonl").read_text().splitlines())}  # noqa: E731
    with_adapter, without = raw(evaluated), raw(tmp_path / "base")
    assert with_adapter.keys() == without.keys()
    assert with_adapter != without, "the LoRA adapter did not change a single greedy answer: was it loaded?"

    # a run saves the tokenizer with the chat template it trained with: eval uses it, not the base model's
    student = tmp_path / "student"
    shutil.copytree(tiny_adapter_dir, student)
    template = (student / "chat_template.jinja").read_text()
    (student / "chat_template.jinja").write_text("STUDENT TEMPLATE MARKER\n" + template)
    backend = HFBackend(str(tiny_model_dir), sampling=sampling, device="cpu", adapter=str(student))
    assert backend.tokenizer.chat_template.startswith("STUDENT TEMPLATE MARKER")
    assert not base.tokenizer.chat_template.startswith("STUDENT")
    # the adapter is folded into the weights for generation: same logits as the base + LoRA (peft) model
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    unmerged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(student)).eval()
    assert type(backend.lm).__name__ != "PeftModelForCausalLM"
    ids = torch.arange(3, 40).unsqueeze(0)
    with torch.no_grad():
        merged_logits, peft_logits = backend.lm(ids).logits, unmerged(ids).logits
        base_logits = base.lm(ids).logits
    assert torch.allclose(merged_logits, peft_logits, atol=1e-5)
    assert not torch.allclose(merged_logits, base_logits, atol=1e-3)


def test_rerun_resumes_and_a_torn_trace_is_regenerated(tasks, tiny_adapter_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(eval_args(tiny_adapter_dir, tasks, out)) == 0
    first = json.loads((out / "report.json").read_text())
    # nothing left to do: no trace is generated twice, the report is the same
    assert main(eval_args(tiny_adapter_dir, tasks, out)) == 0
    assert "0 new traces" in capsys.readouterr().err
    lines = (out / "traces.jsonl").read_text().splitlines(keepends=True)
    assert len(lines) == 7
    # a killed run leaves half a line: the rerun cuts it and answers that task again
    (out / "traces.jsonl").write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    assert main(eval_args(tiny_adapter_dir, tasks, out)) == 0
    assert "1 new traces" in capsys.readouterr().err
    again = json.loads((out / "report.json").read_text())
    assert again["n"] == 7 and again["accuracy"] == first["accuracy"] and again["by_category"] == first["by_category"]
    info = json.loads((out / "eval.json").read_text())
    assert [r["written"] for r in info["runs"]] == [7, 0, 1]
    assert again["generation"]["traces_generated"] == 8 and again["generation"]["runs"] == 3
    # a folder resumed elsewhere says so: the runs that wrote traces, each with where it ran
    assert [r["ran_on"] for r in info["runs"]] == ["cpu float32"] * 3
    info["runs"][0]["ran_on"] = "cuda bfloat16"
    (out / "eval.json").write_text(json.dumps(info))
    lines = (out / "traces.jsonl").read_text().splitlines(keepends=True)
    (out / "traces.jsonl").write_text("".join(lines[:-1]))
    assert main(eval_args(tiny_adapter_dir, tasks, out)) == 0
    assert json.loads((out / "report.json").read_text())["generation"]["ran_on"] == ["cpu float32", "cuda bfloat16"]
    assert "on cpu float32 and cuda bfloat16)." in (out / "summary.md").read_text()


def test_a_run_killed_while_generating_resumes(tasks, tiny_adapter_dir, tmp_path, monkeypatch, capsys):
    """A kill during the first run (here: an interrupt after the first batch) leaves a folder the rerun resumes:
    eval.json is written before the first trace, so the traces are recognised as this evaluation's."""
    from data_gen.backends.hf_backend import HFBackend

    real = HFBackend.generate_batch
    calls = []

    def interrupted(self, batch):
        calls.append(len(batch))
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(self, batch)

    out = tmp_path / "eval"
    monkeypatch.setattr(HFBackend, "generate_batch", interrupted)
    assert main(eval_args(tiny_adapter_dir, tasks, out)) == 130
    assert "interrupted" in capsys.readouterr().err
    assert json.loads((out / "eval.json").read_text())["runs"] == []
    assert len((out / "traces.jsonl").read_text().splitlines()) == 4  # the first batch of 4
    monkeypatch.setattr(HFBackend, "generate_batch", real)
    capsys.readouterr()
    assert main(eval_args(tiny_adapter_dir, tasks, out)) == 0
    assert "3 new traces" in capsys.readouterr().err
    assert json.loads((out / "report.json").read_text())["n"] == 7


def test_a_folder_evaluating_something_else_is_refused(evaluated, tasks, tiny_adapter_dir, tiny_model_dir, tmp_path, capsys):
    before = (evaluated / "traces.jsonl").read_bytes()
    # the base model alone into the student's folder would count the student's traces as its own
    assert main(["eval", "--model", str(tiny_model_dir), "--tasks", str(tasks), "--out", str(evaluated)]) == 2
    err = capsys.readouterr().err
    assert f"{evaluated / 'eval.json'}: this folder holds an evaluation with adapter_fingerprint" in err
    # another task file
    other = write_tasks(tmp_path / "other.jsonl", {"simple": 2})
    assert main(eval_args(tiny_adapter_dir, other, evaluated)) == 2
    assert "tasks_fingerprint" in capsys.readouterr().err
    assert (evaluated / "traces.jsonl").read_bytes() == before
    # input errors name what is wrong
    assert main(eval_args(tmp_path / "nope", tasks, tmp_path / "o")) == 2
    assert "nope: no such adapter folder" in capsys.readouterr().err
    assert main(["eval", "--tasks", str(tasks), "--out", str(tmp_path / "o")]) == 2
    assert "pass --model" in capsys.readouterr().err


def test_served_model_failed_requests_make_a_partial_report_and_exit_1(tmp_path, capsys):
    """The openai backend (a served student or the teacher): requests that still fail after their retries are
    missing from the report, which says so, and the exit status is 1 until a rerun completes them."""
    tasks = tmp_path / "tasks.jsonl"
    write_search_tasks(tasks, 5)
    out = tmp_path / "teacher"
    fail_t3 = lambda body: Fault(status=500) if "number 3" in body["messages"][-1]["content"] else None  # noqa: E731
    args = ["eval", "--backend", "openai", "--model", "stub-model", "--tasks", str(tasks), "--out", str(out),
            "--max-retries", "0", "--no-progress", "--no-plots"]
    with StubServer(fail_when=fail_t3) as server:
        assert main([*args, "--base-url", server.base_url]) == 1
    assert "1 requests failed: the report is partial" in capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["n"] == 4 and report["generation"]["missing"] == 1 and report["accuracy"] == 1.0
    with StubServer() as server:
        assert main([*args, "--base-url", server.base_url]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["n"] == 5 and report["generation"]["missing"] == 0
    assert report["generation"]["backend"] == "openai"


def test_vllm_backend_applies_the_adapter_per_request(tiny_adapter_dir, tiny_model_dir, monkeypatch, tmp_path):
    """vLLM needs a GPU, so its module is replaced by a recorder of what distill asks of it: an engine built with
    LoRA enabled and a large enough rank, every generate() call carrying the adapter's LoRARequest, and prompts
    rendered with the adapter's tokenizer (its training chat template)."""
    import sys
    import types

    from data_gen.backends.base import Request, Sampling

    calls = {}

    class LLM:
        def __init__(self, model, **engine_args):
            calls["engine"] = {"model": model, **engine_args}

        def generate(self, prompts, params, use_tqdm=False, lora_request=None):
            calls.setdefault("generate", []).append((prompts, lora_request))
            out = types.SimpleNamespace(index=0, text="It is sunny.", finish_reason="stop", token_ids=[1, 2, 3])
            return [types.SimpleNamespace(outputs=[out], prompt_token_ids=p["prompt_token_ids"]) for p in prompts]

    class LoRARequest:
        def __init__(self, name, lora_id, path):
            self.name, self.id, self.path = name, lora_id, path

    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = LLM, lambda **kw: kw
    lora_mod, request_mod = types.ModuleType("vllm.lora"), types.ModuleType("vllm.lora.request")
    request_mod.LoRARequest = LoRARequest
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.lora", lora_mod)
    monkeypatch.setitem(sys.modules, "vllm.lora.request", request_mod)

    student = tmp_path / "student"
    shutil.copytree(tiny_adapter_dir, student)
    (student / "chat_template.jinja").write_text("STUDENT " + (student / "chat_template.jinja").read_text())
    from data_gen.backends.vllm_backend import VLLMBackend

    backend = VLLMBackend(str(tiny_model_dir), sampling=Sampling(temperature=0), adapter=str(student))
    assert calls["engine"]["enable_lora"] is True and calls["engine"]["max_lora_rank"] >= 4  # the fixture's r
    req = Request("t0", 0, [{"role": "user", "content": "hi"}], [])

    async def collect():
        return [r async for r in backend.generate([req])]

    import asyncio

    results = asyncio.run(collect())
    prompts, lora = calls["generate"][0]
    assert lora.path == str(student) and results[0].raw == "It is sunny."
    assert backend.tokenizer.decode(prompts[0]["prompt_token_ids"]).startswith("STUDENT")
