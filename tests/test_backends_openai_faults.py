"""The `openai` backend against a real HTTP server (distill/testing/openai_stub.py) that fails on purpose: 500s and 429s
for a while, Retry-After, stalls past the timeout, a request that keeps failing, a server that is down or goes
away, a rejected key. Nothing may be lost or duplicated, and the key never shows."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter

import pytest

from data_gen.backends.base import Sampling
from data_gen.backends.openai_backend import OpenAIBackend
from data_gen.generate import generate
from distill.testing.openai_stub import Fault, StubServer, free_port, write_tasks
from eval.io import DistillError


def backend_for(server_url, **kw):
    kw.setdefault("concurrency", 4)
    kw.setdefault("timeout_s", 5.0)
    return OpenAIBackend("stub-model", base_url=server_url, sampling=Sampling(temperature=0.5, seed=0), **kw)


def traces(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_complete(path, n_tasks, samples):
    recs = traces(path)
    keys = [(r["task_id"], r["sample"]) for r in recs]
    assert sorted(keys) == sorted((f"t{i}", s) for i in range(n_tasks) for s in range(samples)), "lost or duplicated"
    return recs


def test_500s_and_429s_for_a_while_are_retried_and_nothing_is_lost(tmp_path):
    write_tasks(tmp_path / "tasks.jsonl", 6)
    faults = [Fault(status=500), Fault(status=503), Fault(status=429), Fault(status=500), Fault(status=429)]
    with StubServer(faults=faults) as server:
        summary = generate(tmp_path / "tasks.jsonl", backend_for(server.base_url), tmp_path / "out.jsonl", 2,
                           progress=False)
        outcomes = Counter(server.outcomes())
    recs = assert_complete(tmp_path / "out.jsonl", 6, 2)
    assert outcomes == Counter({"ok": 12, "500": 2, "503": 1, "429": 2})
    assert summary.failed == Counter() and summary.written == 12
    assert summary.http_statuses == {200: 13, 500: 2, 503: 1, 429: 2}  # 13: the /models probe too
    assert "HTTP errors seen (retries included): 429 x2, 500 x2, 503 x1" in summary.format()
    # the answer came through the retries intact and was parsed
    for r in recs:
        assert r["tool_calls"][0]["name"] == "search"


def test_retry_after_is_honoured(tmp_path):
    write_tasks(tmp_path / "tasks.jsonl", 1)
    with StubServer(faults=[Fault(status=429, headers={"Retry-After": "1.5"})]) as server:
        generate(tmp_path / "tasks.jsonl", backend_for(server.base_url), tmp_path / "out.jsonl", 1, progress=False)
        first, second = server.chat_requests
    # the client's own backoff for a first retry is at most 0.5 s; the server asked for 1.5 s
    assert second["t"] - first["t"] >= 1.4
    assert_complete(tmp_path / "out.jsonl", 1, 1)


def test_stall_past_the_timeout_is_abandoned_and_retried(tmp_path):
    write_tasks(tmp_path / "tasks.jsonl", 4)
    with StubServer(faults=[Fault(stall_s=30), Fault(stall_s=30)]) as server:
        start = time.monotonic()
        summary = generate(tmp_path / "tasks.jsonl", backend_for(server.base_url, timeout_s=0.5, concurrency=2),
                           tmp_path / "out.jsonl", 2, progress=False)
        elapsed = time.monotonic() - start
        outcomes = Counter(server.outcomes())
    assert elapsed < 10, "waited for the stalled requests instead of timing out"
    assert outcomes == Counter({"ok": 8, "stall": 2})
    assert summary.failed == Counter()
    assert_complete(tmp_path / "out.jsonl", 4, 2)


def test_a_request_that_keeps_failing_is_reported_and_finished_by_the_rerun(tmp_path):
    write_tasks(tmp_path / "tasks.jsonl", 3)
    broken = {"on": True}

    def fail_when(body):  # the server fails every request for task t1 until "fixed"
        return Fault(status=500) if broken["on"] and body["messages"][-1]["content"] == "question number 1 and more" else None

    with StubServer(fail_when=fail_when) as server:
        out = tmp_path / "out.jsonl"
        summary = generate(tmp_path / "tasks.jsonl", backend_for(server.base_url, max_retries=1), out, 2, progress=False)
        assert summary.failed == Counter(http_500=2) and summary.written == 4
        assert "http_500 2" in summary.format() and "rerun the same command" in summary.format()
        assert Counter(server.outcomes())["500"] == 4  # each failing request: first try + 1 retry
        broken["on"] = False
        summary = generate(tmp_path / "tasks.jsonl", backend_for(server.base_url, max_retries=1), out, 2, progress=False)
        assert summary.written == 2 and summary.already == 4 and summary.failed == Counter()
    assert_complete(out, 3, 2)


def test_concurrency_is_reached_across_several_connection_pools_and_never_exceeded(tmp_path):
    from data_gen.backends.openai_backend import CONNECTIONS_PER_CLIENT

    write_tasks(tmp_path / "tasks.jsonl", 24)
    concurrency = CONNECTIONS_PER_CLIENT + 8  # two clients (pools)
    with StubServer(delay_s=0.4) as server:
        summary = generate(tmp_path / "tasks.jsonl", backend_for(server.base_url, concurrency=concurrency),
                           tmp_path / "out.jsonl", 3, progress=False)
        peak = server.peak_in_flight
    assert CONNECTIONS_PER_CLIENT < peak <= concurrency
    assert summary.written == 72
    assert_complete(tmp_path / "out.jsonl", 24, 3)


def test_a_server_that_is_down_fails_fast_with_a_clear_error(tmp_path):
    write_tasks(tmp_path / "tasks.jsonl", 2)
    url = f"http://127.0.0.1:{free_port()}/v1"
    start = time.monotonic()
    with pytest.raises(DistillError, match=r"cannot reach the server at http://127\.0\.0\.1:\d+/v1 .*is the server running"):
        generate(tmp_path / "tasks.jsonl", backend_for(url), tmp_path / "out.jsonl", 1, progress=False)
    assert time.monotonic() - start < 5
    assert (tmp_path / "out.jsonl").read_text() == ""


def test_a_server_that_goes_away_mid_run_stops_the_run_and_keeps_what_was_written(tmp_path):
    write_tasks(tmp_path / "tasks.jsonl", 8)
    out = tmp_path / "out.jsonl"
    server = StubServer(die_after=3).start()
    backend = backend_for(server.base_url, concurrency=1, max_retries=2)
    start = time.monotonic()
    with pytest.raises(DistillError, match=r"lost the server at .*; the 3 traces written before it are kept"):
        generate(tmp_path / "tasks.jsonl", backend, out, 1, progress=False)
    assert time.monotonic() - start < 10
    server.stop()
    assert len(traces(out)) == 3
    # the server comes back (a new one): the rerun finishes exactly the rest
    with StubServer() as again:
        summary = generate(tmp_path / "tasks.jsonl", backend_for(again.base_url), out, 1, progress=False)
    assert summary.already == 3 and summary.written == 5
    assert_complete(out, 8, 1)


def test_tools_native_in_prompt_and_structured_tool_calls(tmp_path):
    write_tasks(tmp_path / "tasks.jsonl", 2)
    with StubServer(structured=True) as server:
        generate(tmp_path / "tasks.jsonl", backend_for(server.base_url), tmp_path / "native.jsonl", 1, progress=False)
        native = [r["body"] for r in server.chat_requests]
    with StubServer() as server:
        generate(tmp_path / "tasks.jsonl", backend_for(server.base_url, tools_in_prompt=True, prompt_style="python"),
                 tmp_path / "prompt.jsonl", 1, progress=False)
        in_prompt = [r["body"] for r in server.chat_requests]
    assert all(b["tools"][0]["function"]["name"] == "search" and b["messages"][0]["role"] == "user" for b in native)
    assert all("tools" not in b for b in in_prompt)
    assert all(b["messages"][0]["role"] == "system" and '"name": "search"' in b["messages"][0]["content"]
               and "Python list" in b["messages"][0]["content"] for b in in_prompt)
    # sampling reached the server, each sample with its own seed
    assert {b["temperature"] for b in native} == {0.5} and len({b["seed"] for b in native}) == 2
    # structured calls: kept verbatim as raw_tool_calls, parsed into tool_calls
    for r in traces(tmp_path / "native.jsonl"):
        assert r["raw"] == "" and r["raw_tool_calls"][0]["function"]["name"] == "search"
        assert r["tool_calls"] == [{"name": "search", "arguments": {"query": json.loads(r["raw_tool_calls"][0]["function"]["arguments"])["query"]}}]


SECRET = "sk-test-0123456789abcdef-not-a-real-key"


def test_api_key_is_sent_but_never_printed_and_a_rejected_key_is_named_by_its_variable(tmp_path):
    write_tasks(tmp_path / "tasks.jsonl", 2)
    env = {"PATH": "/usr/bin:/bin", "MY_TEACHER_KEY": SECRET, "OMP_NUM_THREADS": "1"}
    with StubServer() as server:
        cmd = [sys.executable, "-m", "distill", "generate", "--tasks", str(tmp_path / "tasks.jsonl"),
               "--backend", "openai", "--base-url", server.base_url, "--model", "stub-model",
               "--api-key-env", "MY_TEACHER_KEY", "--out", str(tmp_path / "out.jsonl")]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        auth = {r["headers"].get("authorization") for r in server.chat_requests}
    assert proc.returncode == 0, proc.stderr
    assert auth == {f"Bearer {SECRET}"}
    assert SECRET not in proc.stdout + proc.stderr
    assert SECRET not in (tmp_path / "out.jsonl").read_text()

    with StubServer(faults=[Fault(status=401)]) as server:  # the probe passes, the first completion is refused
        cmd = [*cmd[:9], server.base_url, *cmd[10:-1], str(tmp_path / "out2.jsonl")]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "rejected the API key (HTTP 401)" in proc.stderr and "$MY_TEACHER_KEY" in proc.stderr
    assert SECRET not in proc.stdout + proc.stderr
