"""`distill fleet serve` in front of real OpenAI-compatible servers on 127.0.0.1: `transformers serve` over the tiny
local model (member `tiny`, the dear one), the stdlib stub server of distill/testing/openai_stub.py (member `stub`, cheap), and a
member `ghost` whose endpoint nothing listens on. The stub is the second server because its answers are known: a call
to the request's first tool with {"query": ...}, schema-valid or not depending on the tool, which is what the
escalation checks need (a random tiny model's text cannot be made to fail or pass the schema on purpose).

The router is fit so that weather questions go to `ghost` (then up the ladder: stub, tiny) and math to `tiny`. A
fourth member, `hopeless` (served by the stub too), was right on no calibration task: it sits on the cost ladder
between the stub and tiny, and the router never finds it worth asking."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import httpx
import pytest

from distill.cli import main
from distill.fleet import load_fleet, save_fleet
from distill.testing.fleet_world import DOMAINS, build_world
from distill.testing.openai_stub import StubServer, free_port

START_TIMEOUT_S = 150
ALL = list(DOMAINS)
MEMBERS = {  # accuracy per domain (for the router's calibration verdicts), cost, admitted categories
    "ghost": ({"weather": 0.97, "math": 0.1, "flights": 0.5}, 0.1, ALL),
    "stub": ({"weather": 0.9, "math": 0.1, "flights": 0.5}, 0.5, ALL),
    "tiny": ({"weather": 0.5, "math": 0.95, "flights": 0.9}, 5.0, ALL),
    "hopeless": ({"weather": 0.0, "math": 0.0, "flights": 0.0}, 2.0, ALL),
}


def _wait(url: str, proc: subprocess.Popen, log: Path, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{what} did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.3)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def fleet_server(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("fleet_serve")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    exe = shutil.which("transformers", path=str(Path(sys.executable).parent)) or shutil.which("transformers")
    assert exe, "the `transformers` CLI (transformers[serving]) is needed for this test"
    tiny_port, ghost_port, fleet_port = free_port(), free_port(), free_port()
    tiny_log = root / "transformers_serve.log"
    tiny = subprocess.Popen([exe, "serve", str(tiny_model_dir), "--host", "127.0.0.1", "--port", str(tiny_port)],
                            stdout=open(tiny_log, "w"), stderr=subprocess.STDOUT, env=env)
    stub = StubServer(model="stub-model").start()
    procs = [tiny]
    try:
        # while transformers serve starts: the fleet, its calibration verdicts and a router
        world = build_world(root / "w", n_calib=20, n_heldout=1, members=MEMBERS, samples=3)
        fleet = load_fleet(world.fleet)
        endpoints = {"ghost": {"base_url": f"http://127.0.0.1:{ghost_port}/v1", "model": "ghost"},
                     "stub": {"base_url": stub.base_url, "model": "stub-model"},
                     "hopeless": {"base_url": stub.base_url, "model": "stub-model"},
                     "tiny": {"base_url": f"http://127.0.0.1:{tiny_port}/v1", "model": str(tiny_model_dir)}}
        for m in fleet["members"]:
            m["endpoint"] = endpoints[m["name"]]
        next(m for m in fleet["members"] if m["name"] == "stub")["best_of"] = 3  # 3 samples vote (cost 1.5)
        save_fleet(world.fleet, fleet)
        assert main(["fleet", "fit", "--fleet", str(world.fleet), "--tasks", str(world.calib), "--out",
                     str(world.root / "router"), "--embedder", "minilm-static"]) == 0
        log = root / "fleet_serve.log"
        serve = subprocess.Popen([sys.executable, "-m", "distill", "fleet", "serve", "--fleet", str(world.fleet),
                                  "--port", str(fleet_port), "--down-retry-s", "600"],
                                 stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)
        procs.append(serve)
        _wait(f"http://127.0.0.1:{fleet_port}/health", serve, log, "distill fleet serve")
        _wait(f"http://127.0.0.1:{tiny_port}/health", tiny, tiny_log, "transformers serve")
        yield {"url": f"http://127.0.0.1:{fleet_port}", "log": log, "stub": stub, "ghost_port": ghost_port}
    finally:
        for p in procs:
            _stop(p)
        stub.stop()


def tool(name: str, params: dict, required: list[str]) -> dict:
    return {"type": "function", "function": {"name": name, "description": name.replace("_", " "), "parameters": {
        "type": "object", "properties": params, "required": required, "additionalProperties": False}}}


SEARCH_WEATHER = tool("weather_search", {"query": {"type": "string"}}, ["query"])
GET_WEATHER = tool("get_weather", {"city": {"type": "string"}, "days": {"type": "integer"}}, ["city", "days"])
CALC = tool("calculate_area", {"query": {"type": "string"}}, ["query"])
WEATHER_Q = "What's the weather forecast in Oslo for the next 3 days?"
MATH_Q = "Compute the area of a hexagon with side 4."


def ask(base: str, question: str, tools: list, **extra) -> httpx.Response:
    body = {"model": "fleet", "messages": [{"role": "user", "content": question}], "tools": tools, "max_tokens": 8,
            **extra}
    return httpx.post(f"{base}/v1/chat/completions", json=body, timeout=120)


def test_routes_escalates_on_schema_failure_and_skips_a_down_member(fleet_server):
    base, stub, log = fleet_server["url"], fleet_server["stub"], fleet_server["log"]

    # weather -> the router picks ghost, which is down: skipped with a log line, the stub answers (schema-valid)
    r = ask(base, WEATHER_Q, [SEARCH_WEATHER], seed=7)
    assert r.status_code == 200, r.text
    samples = [q["body"] for q in stub.chat_requests]  # best_of 3: three samples, not greedy, distinct seeds
    assert len(samples) == 3 and {b["temperature"] for b in samples} == {0.7}
    assert sorted(b["seed"] for b in samples) == [7, 8, 9] and {b["model"] for b in samples} == {"stub-model"}
    assert r.headers["x-distill-member"] == "stub" and r.headers["x-distill-tried"] == "ghost,stub"
    assert r.headers["x-distill-verified"] == "true"
    assert "<tool_call>" in r.json()["choices"][0]["message"]["content"]  # the member's answer, as it sent it
    text = log.read_text()
    assert f"member 'ghost' at http://127.0.0.1:{fleet_server['ghost_port']}/v1 is down" in text
    assert "skipping it for 600 s" in text

    # weather again, but the stub's call fails this tool's schema: escalation to tiny (transformers serve), past
    # hopeless, which is not worth its cost
    asked_before = len(stub.chat_requests)
    r = ask(base, WEATHER_Q, [GET_WEATHER])
    assert r.status_code == 200, r.text
    assert r.headers["x-distill-member"] == "tiny" and r.headers["x-distill-tried"] == "stub,tiny"
    assert len(stub.chat_requests) == asked_before + 3  # all three samples failed the schema: escalate
    assert r.json()["choices"][0]["message"] is not None
    text = log.read_text()
    assert "skipping member 'ghost': down" in text
    assert ("the answer of member 'stub' was rejected by the verifier (get_weather: \"city\" is a required property); "
            "escalating to 'tiny' (left out as not worth their cost on this request: hopeless)") in text

    # math -> the router starts at tiny; the cheap stub is not asked at all
    from openai import OpenAI

    client = OpenAI(base_url=f"{base}/v1", api_key="unused")
    raw = client.chat.completions.with_raw_response.create(
        model="fleet", messages=[{"role": "user", "content": MATH_Q}], tools=[CALC], max_tokens=8)
    assert raw.headers["x-distill-member"] == "tiny" and raw.headers["x-distill-tried"] == "tiny"
    assert raw.parse().choices[0].message is not None  # the openai client reads the fleet's answer
    assert len(stub.chat_requests) == asked_before + 3

    stats = httpx.get(f"{base}/v1/fleet/stats", timeout=10).json()
    assert stats["requests"] == 3 and stats["failed"] == 0
    s = stats["members"]
    assert s["ghost"]["down"] == 1 and s["ghost"]["skipped_down"] == 1 and s["ghost"]["is_down"]
    assert (s["stub"]["asked"], s["stub"]["answered"], s["stub"]["rejected"]) == (2, 1, 1)
    assert s["tiny"]["asked"] == 2 and s["tiny"]["answered"] + s["tiny"]["answered_unverified"] == 2
    assert s["hopeless"]["asked"] == 0
    names = [m["id"] for m in httpx.get(f"{base}/v1/models", timeout=10).json()["data"]]
    assert names == ["fleet", "ghost", "stub", "hopeless", "tiny"]


def test_refuses_what_it_cannot_verify_or_parse(fleet_server):
    base = fleet_server["url"]
    r = ask(base, WEATHER_Q, [SEARCH_WEATHER], stream=True)
    assert r.status_code == 400 and "stream" in r.json()["error"]["message"]
    bad = tool("broken", {"x": {"type": "nonsense"}}, [])
    r = ask(base, WEATHER_Q, [bad])
    assert r.status_code == 400 and "tools[0]" in r.json()["error"]["message"]
    r = httpx.post(f"{base}/v1/chat/completions", content=b"{not json", timeout=10)
    assert r.status_code == 400
