"""`distill generate --backend openai` against a real OpenAI-compatible server: `transformers serve` over the
tiny local model, started once for this module on 127.0.0.1. Includes the crash test: `distill generate` is
SIGKILLed mid-run and rerun, and the file must hold every (task, sample) exactly once."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from data_gen.backends.base import Sampling
from data_gen.backends.openai_backend import OpenAIBackend
from data_gen.generate import generate
from distill.testing.openai_stub import free_port, write_tasks
from eval.parse import parse_output

SERVE_START_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def serve(tiny_model_dir, tmp_path_factory):
    """(base_url, model id) of `transformers serve` over the tiny model."""
    exe = shutil.which("transformers", path=str(Path(sys.executable).parent)) or shutil.which("transformers")
    assert exe, "the `transformers` CLI (transformers[serving]) is needed for this test"
    port = free_port()
    log = open(tmp_path_factory.mktemp("serve") / "serve.log", "w+")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([exe, "serve", str(tiny_model_dir), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + SERVE_START_TIMEOUT_S
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"transformers serve did not start:\n{log.read()[-3000:]}")
            time.sleep(0.3)
        yield f"http://127.0.0.1:{port}/v1", str(tiny_model_dir)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def read(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_generate_against_transformers_serve(serve, tmp_path):
    base_url, model = serve
    ids = write_tasks(tmp_path / "tasks.jsonl", 4)
    out = tmp_path / "traces.jsonl"
    backend = OpenAIBackend(model, base_url=base_url, sampling=Sampling(temperature=0.7, max_new_tokens=12, seed=1),
                            concurrency=3, timeout_s=60)
    summary = generate(tmp_path / "tasks.jsonl", backend, out, samples=2, progress=False)
    recs = read(out)
    assert sorted((r["task_id"], r["sample"]) for r in recs) == sorted((i, s) for i in ids for s in range(2))
    assert summary.written == 8 and not summary.failed
    for r in recs:
        assert r["model"] == model and r["backend"] == "openai"
        assert r["finish_reason"] in ("stop", "length")
        assert 0 < r["completion_tokens"] <= 12
        assert r["prompt_tokens"] > 20  # the tools went in through the model's chat template
        assert r["latency_s"] > 0
        # a random model's text is garbage; what matters is that tool_calls is what the verifier reads from raw
        p = parse_output(r["raw"])
        assert r["tool_calls"] == (p.calls if p.status == "calls" else [] if p.status == "no_call" else None)
    assert summary.prompt_tokens == sum(r["prompt_tokens"] for r in recs)

    # the same tasks with the tools rendered into the system prompt instead of the `tools` field
    prompt_out = tmp_path / "prompt_traces.jsonl"
    backend = OpenAIBackend(model, base_url=base_url, sampling=Sampling(max_new_tokens=4), tools_in_prompt=True)
    generate(tmp_path / "tasks.jsonl", backend, prompt_out, samples=1, progress=False)
    assert len(read(prompt_out)) == 4


def test_sigkill_mid_run_then_rerun_gives_each_trace_exactly_once(serve, tmp_path):
    base_url, model = serve
    n_tasks, samples = 12, 3
    write_tasks(tmp_path / "tasks.jsonl", n_tasks)
    out = tmp_path / "traces.jsonl"
    cmd = [sys.executable, "-m", "distill", "generate", "--tasks", str(tmp_path / "tasks.jsonl"),
           "--backend", "openai", "--base-url", base_url, "--model", model, "--samples", str(samples),
           "--max-new-tokens", "24", "--concurrency", "2", "--seed", "0", "--out", str(out), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while (not out.exists() or out.read_bytes().count(b"\n") < 5) and proc.poll() is None:
        assert time.monotonic() < deadline, "no traces appeared"
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed; give it more work"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    partial = out.read_bytes().count(b"\n")
    assert 5 <= partial < n_tasks * samples

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr
    recs = read(out)  # every line parses: no torn line survived
    keys = [(r["task_id"], r["model"], r["sample"]) for r in recs]
    assert len(keys) == n_tasks * samples == len(set(keys))
    assert set(keys) == {(f"t{i}", model, s) for i in range(n_tasks) for s in range(samples)}
    # the rerun generated exactly what the killed run had not finished
    assert f"{n_tasks * samples - partial} new traces" in rerun.stderr
    assert f"{partial} already in" in rerun.stderr
