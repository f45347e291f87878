"""`distill fleet serve` under abuse, in-process (the FastAPI app over real stub member servers on 127.0.0.1): body
size limit (413), bad bodies (400), the tools limit, bearer-token auth, the bounded compiled-schema cache, schema
compilation off the event loop, an answer the verifier cannot check escalating, and no member key in a 503 body or a
log line. The soak (thousands of requests, RSS, 200 at once) is benchmarks/serve_soak.py."""

from __future__ import annotations

import asyncio
import json
import logging
import threading

import httpx
import pytest

from distill.fleet import serve
from distill.fleet.cascade import Member
from distill.fleet.serve import FleetServer, create_app
from distill.testing.openai_stub import Fault, StubServer
from eval.io import DistillError

MEMBER_KEY = "zq-member-7d1f0c9a8b2e"  # in a variable whose name says nothing: found because it is registered
CLIENT_KEY = "fleet-client-key-55aa01"


def tool(i: int) -> dict:
    return {"type": "function", "function": {"name": f"tool_{i}", "description": "t", "parameters": {
        "type": "object", "properties": {"query": {"type": "string"}, f"p{i}": {"type": "integer"}},
        "required": ["query"]}}}


def request(i: int = 0, tools: list | None = None) -> dict:
    return {"model": "fleet", "messages": [{"role": "user", "content": f"question {i}"}],
            "tools": [tool(i)] if tools is None else tools}


def member(name: str, stub: StubServer, cost: float, **endpoint) -> Member:
    return Member(name=name, cost=cost, categories=None,
                  endpoint={"base_url": stub.base_url, "model": "stub-model", **endpoint})


@pytest.fixture
def stub():
    with StubServer(model="stub-model") as s:
        yield s


def call(app, method: str, path: str, **kwargs) -> httpx.Response:
    """One request through the ASGI app (no socket), in a fresh event loop."""
    return calls(app, [(method, path, kwargs)])[0]


def calls(app, requests: list[tuple[str, str, dict]]) -> list[httpx.Response]:
    """Requests one after another through the ASGI app, in one event loop (the server's client to its members
    belongs to the loop it first ran on, as under uvicorn)."""

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fleet") as client:
            return [await client.request(method, path, **kwargs) for method, path, kwargs in requests]

    return asyncio.run(go())


def chat(body: dict, **kwargs) -> tuple[str, str, dict]:
    return "POST", "/v1/chat/completions", {"json": body, **kwargs}


def test_answers_a_valid_request(stub):
    app = create_app(FleetServer([member("a", stub, 1.0)]))
    r = call(app, "POST", "/v1/chat/completions", json=request())
    assert r.status_code == 200 and r.headers["x-distill-verified"] == "true"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_body_over_the_limit_gets_413(stub, chunked):
    app = create_app(FleetServer([member("a", stub, 1.0)]), max_body_bytes=4096)
    data = json.dumps({**request(), "padding": "x" * 5000}).encode()

    async def pieces():  # no Content-Length: the server counts the bytes as they arrive
        for i in range(0, len(data), 1000):
            yield data[i:i + 1000]

    big, small = calls(app, [("POST", "/v1/chat/completions", {"content": pieces() if chunked else data,
                                                                "headers": {"content-type": "application/json"}}),
                             chat(request())])
    assert big.status_code == 413 and "--max-body-mb" in big.json()["error"]["message"]
    assert small.status_code == 200
    assert len(stub.chat_requests) == 1  # only the small request reached a member


@pytest.mark.parametrize(
    "body, why",
    [
        (b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
        (b"\xff\xfe not json", "not JSON"),
        (b'{"messages": [1e' + b"9" * 5000 + b"]}", ""),  # a number the decoder accepts: not a message object
        (b'{"messages": [{"role": "user", "content": "q"}], "n": ' + b"9" * 5000 + b"}", "not JSON"),
        (b"[]", "JSON object"),
        (b'{"messages": "hello"}', "messages"),
        (b'{"messages": [{"content": "no role"}]}', "role"),
        (b'{"messages": [{"role": "user", "content": "q"}], "tools": {"a": 1}}', "tools"),
        (b'{"messages": [{"role": "user", "content": "q"}], "tools": [{"type": "function"}]}', "tools[0]"),
        (b'{"messages": [{"role": "user", "content": "q"}], "seed": "x"}', "seed"),
        (b'{"messages": [{"role": "user", "content": "q"}], "stream": true}', "stream"),
    ],
    ids=["100k-deep", "binary", "huge-float", "5000-digit-int", "array", "messages-str", "no-role", "tools-dict",
         "tool-without-name", "seed-str", "stream"],
)
def test_bad_bodies_get_400(stub, body, why):
    app = create_app(FleetServer([member("a", stub, 1.0)]))
    r = call(app, "POST", "/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert why in r.json()["error"]["message"]
    assert stub.chat_requests == []


def test_too_many_tools_get_400(stub):
    app = create_app(FleetServer([member("a", stub, 1.0)], max_tools=3))
    over, at = calls(app, [chat(request(0, [tool(k) for k in range(4)])), chat(request(0, [tool(k) for k in range(3)]))])
    assert over.status_code == 400 and "at most 3 (--max-tools)" in over.json()["error"]["message"]
    assert at.status_code == 200


def test_bearer_auth(stub):
    app = create_app(FleetServer([member("a", stub, 1.0)]), api_key=CLIENT_KEY)
    assert call(app, "GET", "/health").status_code == 200  # load balancers probe without a key
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": CLIENT_KEY}):
        for method, path in (("GET", "/v1/models"), ("GET", "/v1/fleet/stats"), ("POST", "/v1/chat/completions")):
            r = call(app, method, path, json=request(), headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (headers, path)
    assert stub.chat_requests == []
    ok = call(app, "POST", "/v1/chat/completions", json=request(), headers={"authorization": f"Bearer {CLIENT_KEY}"})
    assert ok.status_code == 200


def test_compiled_schema_cache_is_bounded_lru(stub):
    server = FleetServer([member("a", stub, 1.0)], schema_cache=5)
    app = create_app(server)
    reordered = json.loads(json.dumps(tool(10), sort_keys=True))  # the same tool, its keys in another order
    reordered["function"] = dict(reversed(list(reordered["function"].items())))
    responses = calls(app, [chat(request(i)) for i in range(12)]  # twelve distinct tool sets
                      + [chat(request(11)), chat(request(10, [reordered]))])  # two still in the cache
    assert [r.status_code for r in responses] == [200] * 14
    info = server.compiled.cache_info()
    assert info.currsize == 5 and info.maxsize == 5 and info.misses == 12 and info.hits == 2


def test_schema_compilation_runs_off_the_event_loop(stub, monkeypatch):
    # Compiling is held until /health has answered: if it ran on the event loop, /health could never answer.
    started, release = threading.Event(), threading.Event()
    real = serve._request_task

    def slow_compile(tools_json):
        started.set()
        assert release.wait(10)
        return real(tools_json)

    monkeypatch.setattr(serve, "_request_task", slow_compile)
    app = create_app(FleetServer([member("a", stub, 1.0)]))

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fleet") as client:
            chat = asyncio.create_task(client.post("/v1/chat/completions", json=request()))
            while not started.is_set():
                await asyncio.sleep(0.01)
            health = await asyncio.wait_for(client.get("/health"), 5)
            release.set()
            return health, await chat

    health, chat = asyncio.run(go())
    assert health.status_code == 200 and chat.status_code == 200


def test_an_answer_that_cannot_be_verified_escalates(monkeypatch):
    from distill.fleet import cascade

    with StubServer(model="stub-model") as cheap, StubServer(model="stub-model") as dear:
        real = cascade.check_answer
        calls = {"n": 0}

        def check_that_breaks_once(task, raw, tool_calls=None):
            calls["n"] += 1
            if calls["n"] == 1:
                raise ValueError("the verifier met something it cannot handle")
            return real(task, raw, tool_calls)

        monkeypatch.setattr(cascade, "check_answer", check_that_breaks_once)  # what fleet serve's cascade calls
        app = create_app(FleetServer([member("cheap", cheap, 0.1), member("dear", dear, 5.0)]))
        r = call(app, "POST", "/v1/chat/completions", json=request())
    assert r.status_code == 200 and r.headers["x-distill-member"] == "dear"
    assert r.headers["x-distill-tried"] == "cheap,dear" and r.headers["x-distill-verified"] == "true"


def test_member_key_echoed_in_an_error_body_reaches_neither_client_nor_log(monkeypatch, caplog):
    monkeypatch.setenv("MEMBER_CREDS", MEMBER_KEY)
    with StubServer(model="stub-model", faults=[Fault(status=500, echo_headers=True)]) as stub:
        app = create_app(FleetServer([member("a", stub, 1.0, api_key_env="MEMBER_CREDS")]))
        with caplog.at_level(logging.INFO, logger="distill.fleet.serve"):
            r = call(app, "POST", "/v1/chat/completions", json=request())
        sent = stub.chat_requests[0]["headers"]["authorization"]
    assert sent == f"Bearer {MEMBER_KEY}"  # the member did get its key, and echoed it back in its 500 body
    assert r.status_code == 503 and "HTTP 500" in r.text
    assert MEMBER_KEY not in r.text and '\\"Authorization\\": \\"Bearer <redacted>\\"' in r.text
    assert "HTTP 500" in caplog.text and MEMBER_KEY not in caplog.text


def test_a_no_call_answer_ends_the_cascade_only_from_a_member_trusted_to_abstain(monkeypatch):
    """fleet serve applies the abstention policy fleet eval replays: the cheap member answers without a call; by
    default that escalates unless the member is admitted for abstention on the request's category."""
    real_ask = FleetServer._ask

    async def ask(self, m, body, sample):
        if m.name == "cheap":
            return {"choices": [{"index": 0, "message": {"role": "assistant", "content": "No tool fits this."}}]}
        return await real_ask(self, m, body, sample)

    monkeypatch.setattr(FleetServer, "_ask", ask)
    with StubServer(model="stub-model") as cheap, StubServer(model="stub-model") as dear:
        untrusted = member("cheap", cheap, 0.1)
        trusted = Member(name="cheap", cost=0.1, categories=None, abstains={"irrelevance"},
                         endpoint={"base_url": cheap.base_url, "model": "stub-model"})
        cases = [
            (FleetServer([untrusted, member("dear", dear, 5.0)]), None, "dear"),
            (FleetServer([trusted, member("dear", dear, 5.0)]), "irrelevance", "cheap"),
            (FleetServer([trusted, member("dear", dear, 5.0)]), "simple_python", "dear"),
            (FleetServer([untrusted, member("dear", dear, 5.0)], abstain_policy="accept"), None, "cheap"),
        ]
        for server, category, answered_by in cases:
            headers = {"x-distill-category": category} if category else {}
            r = call(create_app(server), "POST", "/v1/chat/completions", json=request(), headers=headers)
            assert r.status_code == 200 and r.headers["x-distill-member"] == answered_by, (category, r.headers)
    with pytest.raises(DistillError, match="--abstain-policy"):
        FleetServer([member("a", dear, 1.0)], abstain_policy="sometimes")
