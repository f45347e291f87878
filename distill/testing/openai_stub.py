"""A small real HTTP server speaking OpenAI's /v1/chat/completions, with scripted faults, for backend tests.

    with StubServer(faults=[Fault(status=500)] * 3 + [Fault(stall_s=5)]) as server:
        server.base_url            # http://127.0.0.1:PORT/v1
        ...                        # the first requests meet the faults in order, later ones are answered
        server.chat_requests       # every chat request: {"body", "headers" (lower-case names), "t", "outcome"}

stdlib `http.server` in a thread: no dependency beyond Python, and a real socket, so the openai client's
connection handling, timeouts and retries run exactly as against a production server. A correct answer is a
Hermes tool call to the request's first tool (or plain text without tools), as structured `tool_calls` with
`structured=True`.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Fault:
    status: int | None = None  # answer with this HTTP status
    headers: dict = field(default_factory=dict)  # e.g. {"Retry-After": "1"}
    stall_s: float = 0.0  # hold the request this long before answering (past the client's timeout)
    echo_headers: bool = False  # the error body repeats the request's headers, Authorization included (as some
    # debugging proxies and misconfigured servers do): what a client must not print or log


def answer_for(body: dict) -> tuple[str, list | None]:
    """The stub's deterministic answer: a call to the first tool with the last user message as `query`."""
    tools = body.get("tools") or []
    user = [m for m in body.get("messages", []) if m.get("role") == "user"]
    query = user[-1]["content"] if user else ""
    if not tools:
        return f"no tools for: {query}", None
    name = tools[0]["function"]["name"]
    return name, [{"name": name, "arguments": {"query": query}}]


class StubServer:
    def __init__(
        self,
        faults: list[Fault] | None = None,
        *,
        model: str = "stub-model",
        structured: bool = False,
        delay_s: float = 0.0,
        fail_when=None,
        die_after: int | None = None,
    ):
        self.faults = list(faults or [])
        self.model = model
        self.structured = structured  # answer with message.tool_calls instead of Hermes text
        self.delay_s = delay_s  # every answer takes this long (a slow teacher)
        self.fail_when = fail_when  # body -> Fault | None: a fault chosen by content (persistent failures)
        self.die_after = die_after  # answer this many chat requests, then drop the next and go away for good
        self.answered = 0
        self.in_flight = 0
        self.peak_in_flight = 0  # most chat requests being handled at once
        self.connections: set = set()
        self.chat_requests: list[dict] = []
        self.lock = threading.Lock()
        self.release = threading.Event()  # set on stop: stalled handlers give up at once
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def outcomes(self) -> list[str]:
        with self.lock:
            return [r["outcome"] for r in self.chat_requests]

    def _next_fault(self, body: dict) -> Fault | None:
        with self.lock:
            if self.faults:
                return self.faults.pop(0)
        return self.fail_when(body) if self.fail_when else None

    def _reply(self, body: dict) -> dict:
        text, calls = answer_for(body)
        message: dict = {"role": "assistant"}
        if calls and self.structured:
            message["content"] = None
            message["tool_calls"] = [
                {"id": f"call_{i}", "type": "function",
                 "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])}}
                for i, c in enumerate(calls)
            ]
        elif calls:
            message["content"] = "\n".join(f"<tool_call>\n{json.dumps(c)}\n</tool_call>" for c in calls)
        else:
            message["content"] = text
        return {
            "id": "chatcmpl-stub",
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model", self.model),
            "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop"}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
        }

    def _handler(self):
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def setup(self):
                super().setup()
                # headers and body go out in two writes: without TCP_NODELAY the body waits ~40 ms for the
                # client's delayed ACK, which would dominate every latency measured against this stub
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with stub.lock:
                    stub.connections.add(self.connection)

            def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": stub.model, "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"error": {"message": "not found"}})
                    return
                with stub.lock:
                    dying = stub.die_after is not None and stub.answered >= stub.die_after
                if dying:  # the process "crashed": no answer, and nothing listens any more
                    self.close_connection = True
                    threading.Thread(target=stub.stop, daemon=True).start()
                    return
                with stub.lock:
                    stub.in_flight += 1
                    stub.peak_in_flight = max(stub.peak_in_flight, stub.in_flight)
                try:
                    self._chat(body)
                finally:
                    with stub.lock:
                        stub.in_flight -= 1

            def _chat(self, body: dict) -> None:
                fault = stub._next_fault(body)
                record = {"body": body, "headers": {k.lower(): v for k, v in self.headers.items()}, "t": time.monotonic(), "outcome": "ok"}
                with stub.lock:
                    stub.chat_requests.append(record)
                if fault and fault.stall_s:
                    record["outcome"] = "stall"
                    stub.release.wait(fault.stall_s)
                if fault and fault.status:
                    record["outcome"] = str(fault.status)
                    error = {"message": f"stub fault {fault.status}"}
                    if fault.echo_headers:
                        error["request_headers"] = dict(sorted(self.headers.items()))  # Authorization early
                    self._send(fault.status, {"error": error}, fault.headers)
                    return
                if stub.delay_s:
                    time.sleep(stub.delay_s)
                with stub.lock:
                    stub.answered += 1
                self._send(200, stub._reply(body))

        return Handler

    def start(self) -> StubServer:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        # A client that gave up on a stalled request has closed its socket; the late write fails, harmlessly.
        self._server.handle_error = lambda request, client_address: None
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut every open connection, keep-alive ones included (as a dead process would)."""
        import socket

        self.release.set()
        if self._server:
            self._server.shutdown()
            self._server.server_close()
        with self.lock:
            conns, self.connections = list(self.connections), set()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> StubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_tasks(path, n: int, *, prefix: str = "t") -> list[str]:
    """n valid tasks (one `search` tool taking a string `query`) in distill's task format; returns their ids."""
    tool = {
        "type": "function",
        "function": {
            "name": "search",
            "description": "Search the web.",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
        },
    }
    ids = [f"{prefix}{i}" for i in range(n)]
    with open(path, "w", encoding="utf-8") as f:
        for i, tid in enumerate(ids):
            query = f"question number {i}" + " and more" * (i % 4)  # prompts of different lengths
            f.write(json.dumps({
                "id": tid,
                "category": "simple",
                "messages": [{"role": "user", "content": query}],
                "tools": [tool],
                "expected": [{"name": "search", "arguments": {"query": [query]}}],
            }) + "\n")
    return ids
