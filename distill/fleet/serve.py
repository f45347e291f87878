"""`distill fleet serve`: one OpenAI-compatible endpoint in front of the fleet, routing each chat completion to a
member's own server and escalating while the verifier rejects the answer.

    distill fleet serve --fleet fleet.yaml --port 8080
    curl -s -D - http://127.0.0.1:8080/v1/chat/completions -H 'content-type: application/json' \\
        -d '{"model": "fleet", "messages": [...], "tools": [...]}'         # header x-distill-member: who answered
    curl -s http://127.0.0.1:8080/v1/fleet/stats                          # counts per member

Each member needs an `endpoint` in fleet.yaml (kept by `distill fleet admit`):

    - name: qwen05-dpo
      endpoint: {base_url: "http://10.0.0.5:8000/v1", model: qwen05-dpo, api_key_env: QWEN_KEY}   # key optional

Per request: the router (fleet.yaml's `router` section, written by `distill fleet fit`, or --router) orders the
members (its pick first, then up the cost ladder, leaving out the members it expects not to be worth their cost on
the request; without a router, cheapest first); each member is asked in turn
and its answer is checked as `fleet eval` assumes: it must parse, call only the request's tools, and pass their
JSON Schemas. The first accepted answer is returned as the member sent it, with headers `x-distill-member` (who
answered), `x-distill-tried` (who was asked, in order) and `x-distill-verified` (false when every member was
rejected and the last answer is returned anyway). A member with `best_of: k` is asked k times at once (at
temperature 0.7 when the request asks for greedy decoding), and the schema-valid answers vote. A request without
tools cannot be checked and is answered by the first member that answers. A client may declare the request's
category with the header `x-distill-category` (else the router infers it) to restrict the members to those admitted
for it.

A member that cannot be reached is skipped, with a log line, for --down-retry-s seconds, then tried again; an
HTTP error from a member escalates like a rejected answer, and so does an answer the verifier cannot check. Streaming
is refused: the verifier needs the whole answer.

Limits, so that no client can exhaust the server: a body over --max-body-mb gets 413 (read no further), a request
with more than --max-tools tools or a body that is not a chat request (not JSON, nested too deep, wrong types) gets
400; the tools of a request are compiled once and kept in an LRU cache of --schema-cache entries (memory stays
bounded however many distinct schemas arrive), and compiling and checking run in worker threads, off the event loop.
With --api-key-env NAME every route but /health needs `Authorization: Bearer <the value of $NAME>` (401 otherwise):
set it whenever --host is not a loopback address. Error messages, log lines and 503 bodies are scrubbed of secrets
(a member's error body that echoes the request's `Authorization` header included).
"""

# No `from __future__ import annotations` here: FastAPI reads the handlers' annotations (`request: Request`) at
# runtime, and the lazily imported Request would not resolve from a string.
import argparse
import asyncio
import functools
import hmac
import ipaddress
import json
import logging
import os
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from distill.fleet.cascade import (
    ABSTAIN_POLICIES,
    DEFAULT_ABSTAIN_POLICY,
    Member,
    check_policy,
    choose_answer,
    cost_ladder,
    fleet_members,
)
from eval.io import DistillError, fill_paragraphs
from eval.secrets import ScrubFilter, register_secret, scrub

log = logging.getLogger("distill.fleet.serve")
log.addFilter(ScrubFilter())  # every line, whatever handler the embedding application attaches
BEST_OF_TEMPERATURE = 0.7
CONNECT_TIMEOUT_S = 2.0
# Defaults of the request limits (flags of `distill fleet serve`). 128 tools is what OpenAI's API accepts in one
# request, so a client written against it never meets the limit; 8 MB holds 128 large tool schemas and a long
# conversation many times over. 1024 cached tool sets cover BFCL's live categories (~700 distinct) several times.
MAX_TOOLS = 128
MAX_BODY_MB = 8.0
SCHEMA_CACHE = 1024
PARSE_OFF_LOOP_BYTES = 64 * 1024  # bodies larger than this are decoded in a worker thread


class _StderrHandler(logging.StreamHandler):
    """A StreamHandler on whatever sys.stderr is when a record is written, not the stream at setup: a caller that
    swaps stderr (a test harness, an embedding application) and closes the old one does not break the log."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ sets it; the property always answers sys.stderr
        pass


def _setup_logging() -> None:
    """Request and escalation lines on stderr. Records still propagate, so handlers on the root logger (an
    application's, pytest's caplog) see them as well."""
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        h = _StderrHandler()
        h.setFormatter(logging.Formatter("distill fleet serve: %(message)s"))
        log.addHandler(h)
        log.setLevel(logging.INFO)


class FleetServer:
    """The routing and cascade logic, independent of the web framework (the FastAPI app below is a thin shell)."""

    def __init__(self, members: list[Member], router=None, alpha: float | None = None, timeout_s: float = 60.0,
                 down_retry_s: float = 30.0, *, max_tools: int = MAX_TOOLS, schema_cache: int = SCHEMA_CACHE,
                 abstain_policy: str = DEFAULT_ABSTAIN_POLICY):
        self.members = [m for m in members if m.endpoint]
        for m in members:
            if not m.endpoint:
                log.warning("member %r has no `endpoint` in the fleet file: it is not served", m.name)
        if not self.members:
            raise DistillError("no fleet member has an `endpoint` (base_url, model) in the fleet file: nothing to serve")
        self.router = router
        self.alpha = alpha
        self.abstain_policy = check_policy(abstain_policy)
        self.timeout_s = timeout_s
        self.down_retry_s = down_retry_s
        self.down_until: dict[str, float] = {}
        self.stats = {m.name: Counter() for m in self.members}
        self.totals = Counter()
        self._client = None
        # The embedder is CPU-bound torch code: one worker thread keeps it off the event loop and serial.
        self._embed_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="distill-embed")
        self._inline = router is not None and router.meta["embedder"] == "minilm-static"
        if max_tools < 1 or schema_cache < 1:
            raise DistillError(f"--max-tools and --schema-cache must be at least 1, got {max_tools} and {schema_cache}")
        self.max_tools = max_tools
        # The request's tools compiled into a Task (JSON Schema validators included), by the tools' canonical JSON:
        # a bounded LRU, since every distinct schema a client sends would otherwise stay in memory.
        self.compiled = functools.lru_cache(maxsize=schema_cache)(_request_task)

    async def client(self):
        import httpx

        if self._client is None:
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(self.timeout_s, connect=CONNECT_TIMEOUT_S),
                                             limits=httpx.Limits(max_connections=256, max_keepalive_connections=64))
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        self._embed_pool.shutdown(wait=False)

    def warm_up(self) -> None:
        if self.router is not None:
            t0 = time.perf_counter()
            self.router.features([([{"role": "user", "content": "warm up"}], None)])
            log.info("router embedder %s loaded in %.1f s", self.router.meta["embedder"], time.perf_counter() - t0)

    async def ladder(self, body: dict, category: str | None) -> tuple[list[Member], str | None, list[str]]:
        """The members to ask, in order; the request's category (declared, or the router's vote), which decides
        whose abstentions are trusted; and the members the router left out of the ladder as not worth their cost on
        this request."""
        if self.router is None:
            return cost_ladder(self.members, category), category, []
        def route():
            return self.router.route(body.get("messages") or [], body.get("tools"), alpha=self.alpha, category=category)

        if self._inline:  # a static embedder decides in ~0.3 ms: less than the hop to a worker thread
            d = route()
        else:
            d = await asyncio.get_running_loop().run_in_executor(self._embed_pool, route)
        servable = {m.name for m in self.members}
        kept = d.ladder  # a property that builds the ladder: read once per request
        asked = {m.name for m in kept}
        left_out = [m.name for m in d.every_rung if m.name in servable and m.name not in asked]
        ladder = [m for m in kept if m.name in servable]
        return ladder or cost_ladder(self.members, category), d.category, left_out

    async def _ask(self, m: Member, body: dict, sample: int) -> dict:
        """One chat completion from a member: the parsed JSON. Raises ConnectionError when it cannot be reached,
        RuntimeError for any other failure (HTTP error, timeout, a body that is not a completion)."""
        import httpx

        ep = m.endpoint
        payload = {**body, "model": ep.get("model") or body.get("model")}
        if m.best_of > 1:
            if not payload.get("temperature"):
                payload["temperature"] = BEST_OF_TEMPERATURE  # k greedy answers would be one answer k times
            if payload.get("seed") is not None:
                payload["seed"] = int(payload["seed"]) + sample
        headers = {}
        if ep.get("api_key_env") and os.environ.get(ep["api_key_env"]):
            register_secret(os.environ[ep["api_key_env"]])  # scrubbed wherever it appears, whatever its variable's name
            headers["Authorization"] = f"Bearer {os.environ[ep['api_key_env']]}"
        url = ep["base_url"].rstrip("/") + "/chat/completions"
        client = await self.client()
        try:
            r = await client.post(url, json=payload, headers=headers)
        except (httpx.ConnectError, httpx.ConnectTimeout) as e:
            raise ConnectionError(scrub(f"{type(e).__name__}: {e}")) from None
        except httpx.HTTPError as e:
            raise RuntimeError(scrub(f"{type(e).__name__}: {e}")) from None
        # A member's error body may echo the request's headers (our Authorization to it): scrubbed before it is
        # shortened, so that no cut leaves part of a key unrecognised.
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {scrub(' '.join(r.text.split()))[:200]}")
        try:
            data = r.json()
            message = data["choices"][0]["message"]
        except (ValueError, KeyError, IndexError, TypeError, RecursionError):
            raise RuntimeError(f"not a chat completion: {scrub(' '.join(r.text.split()))[:200]}") from None
        if not isinstance(message, dict):
            raise RuntimeError("not a chat completion: choices[0].message is not an object")
        return data

    async def complete(self, body: dict, category: str | None = None) -> tuple[int, dict, dict]:
        """(HTTP status, JSON body, extra headers) for one chat completion request."""
        problem = self.request_problem(body)
        if problem is not None:
            return 400, _error(problem, "invalid_request_error"), {}
        task = None
        if body.get("tools"):
            try:  # the request's tools as a task without an answer, compiled once per distinct tool set
                task = await asyncio.to_thread(self.task_for, body["tools"])
            except DistillError as e:
                return 400, _error(str(e), "invalid_request_error"), {}
        self.totals["requests"] += 1
        ladder, category, left_out = await self.ladder(body, category)
        tried, failures = [], []
        last: tuple[Member, dict] | None = None
        now = time.monotonic()
        for i, m in enumerate(ladder):
            st = self.stats[m.name]
            if self.down_until.get(m.name, 0) > now:
                st["skipped_down"] += 1
                log.info("skipping member %r: down (next try in %.0f s)", m.name, self.down_until[m.name] - now)
                failures.append(f"{m.name} down")
                continue
            tried.append(m.name)
            st["asked"] += 1
            outs = await asyncio.gather(*(self._ask(m, body, s) for s in range(m.best_of)), return_exceptions=True)
            errors = [o for o in outs if isinstance(o, BaseException)]
            if any(isinstance(o, ConnectionError) for o in errors):
                self.down_until[m.name] = time.monotonic() + self.down_retry_s
                st["down"] += 1
                log.warning("member %r at %s is down (%s): skipping it for %.0f s", m.name, m.endpoint["base_url"],
                            next(o for o in errors if isinstance(o, ConnectionError)), self.down_retry_s)
                failures.append(f"{m.name} down")
                continue
            if m.name in self.down_until:
                del self.down_until[m.name]
                log.info("member %r is back", m.name)
            answers = [o for o in outs if not isinstance(o, BaseException)]
            if not answers:
                st["errors"] += 1
                log.warning("member %r failed (%s); escalating", m.name, errors[0])
                failures.append(f"{m.name} {errors[0]}")
                continue
            try:
                chosen, reason = await asyncio.to_thread(_pick, task, answers, m, category, self.abstain_policy)
            except Exception as e:  # an answer the verifier cannot check is not trusted: escalate
                chosen, reason = None, f"the answer could not be verified ({type(e).__name__}: {str(e)[:100]})"
            if chosen is not None:
                st["answered"] += 1
                return 200, chosen, _headers(m.name, tried, True)
            st["rejected"] += 1
            last = (m, answers[0])
            nxt = next((x.name for x in ladder[i + 1:]), None)
            log.info("the answer of member %r was rejected by the verifier (%s); %s%s", m.name, reason,
                     f"escalating to {nxt!r}" if nxt else "no member left to escalate to",
                     f" (left out as not worth their cost on this request: {', '.join(left_out)})" if left_out else "")
        if last is not None:  # every member that answered was rejected: the dearest answer is the fleet's best
            m, data = last
            self.stats[m.name]["answered_unverified"] += 1
            self.totals["unverified"] += 1
            return 200, data, _headers(m.name, tried, False)
        self.totals["failed"] += 1
        return 503, _error(scrub(f"no fleet member could answer: {'; '.join(failures)}"), "fleet_unavailable"), \
            {"x-distill-tried": ",".join(tried)}

    def request_problem(self, body) -> str | None:
        """Why a decoded body is not a chat request this server can route (the 400 message), or None."""
        if not isinstance(body, dict):
            return "the body must be a JSON object"
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return "the request needs a non-empty `messages` list"
        if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
            return "every message must be an object with a string `role`"
        if body.get("stream"):
            return "stream is not supported by the fleet router: the verifier needs the whole answer"
        tools = body.get("tools")
        if tools is not None and not isinstance(tools, list):
            return "`tools` must be a list"
        if tools and len(tools) > self.max_tools:
            return f"{len(tools)} tools in one request; this server accepts at most {self.max_tools} (--max-tools)"
        seed = body.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            return "`seed` must be an integer"
        return None

    def task_for(self, tools: list):
        """The request's tools compiled (from the LRU cache when this tool set was seen). Raises DistillError for a
        tool that is not valid; runs in a worker thread (serialising and compiling large schemas takes time)."""
        try:
            key = json.dumps(tools, sort_keys=True, ensure_ascii=False)
        except (TypeError, ValueError, RecursionError):
            raise DistillError("`tools` cannot be read as JSON") from None
        return self.compiled(key)

    def snapshot(self) -> dict:
        now = time.monotonic()
        return {
            "requests": self.totals["requests"], "unverified": self.totals["unverified"], "failed": self.totals["failed"],
            "members": {m.name: {"asked": s["asked"], "answered": s["answered"], "rejected": s["rejected"],
                                 "answered_unverified": s["answered_unverified"], "errors": s["errors"],
                                 "down": s["down"], "skipped_down": s["skipped_down"],
                                 "is_down": self.down_until.get(m.name, 0) > now, "cost": m.cost}
                        for m, s in ((m, self.stats[m.name]) for m in self.members)},
        }


def _request_task(tools_json: str):
    """A request's tools as an eval Task without an answer, for the gold-free check (cached by FleetServer)."""
    from eval.tasks import task_from_dict

    try:
        tools = json.loads(tools_json)
    except RecursionError:
        raise DistillError("`tools` are nested too deeply") from None
    return task_from_dict({"id": "request", "messages": [{"role": "user", "content": ""}], "tools": tools,
                           "expected": []}, "request")


def _pick(task, answers: list[dict], member: Member, category: str | None, policy: str) -> tuple[dict | None, str]:
    """The answer to return from one member's samples (None when the verifier or the abstention policy rejects
    them all), and why not: the cascade rule `fleet eval` replays (distill.fleet.cascade.choose_answer)."""
    i, reason = choose_answer(task, member, [a["choices"][0]["message"] for a in answers], category, policy)
    return (answers[i] if i is not None else None), reason


def _headers(member: str, tried: list[str], verified: bool) -> dict:
    return {"x-distill-member": member, "x-distill-tried": ",".join(tried), "x-distill-verified": str(verified).lower()}


def _error(message: str, kind: str) -> dict:
    return {"error": {"message": message, "type": kind}}


def create_app(server: FleetServer, *, max_body_bytes: int = int(MAX_BODY_MB * 2**20), api_key: str | None = None):
    """The FastAPI app around `server`. Bodies over max_body_bytes get 413; with api_key, every route but /health
    needs `Authorization: Bearer <api_key>`."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    @asynccontextmanager
    async def lifespan(app):
        yield
        await server.close()

    app = FastAPI(title="distill fleet", lifespan=lifespan)

    if api_key:
        register_secret(api_key)
        expected = f"Bearer {api_key}".encode()

        @app.middleware("http")
        async def require_key(request: Request, call_next):
            # Checked before any body is read, so an unauthenticated client cannot make the server read one.
            given = request.headers.get("authorization", "").encode()
            if request.url.path != "/health" and not hmac.compare_digest(given, expected):
                return JSONResponse(_error("a valid `Authorization: Bearer <key>` header is needed",
                                           "authentication_error"), status_code=401,
                                    headers={"www-authenticate": "Bearer"})
            return await call_next(request)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        names = ["fleet", *[m.name for m in server.members]]
        return {"object": "list", "data": [{"id": n, "object": "model", "owned_by": "distill"} for n in names]}

    @app.get("/v1/fleet/stats")
    async def stats():
        return server.snapshot()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        too_large = JSONResponse(_error(f"the body is larger than this server accepts ({max_body_bytes:,} bytes; "
                                        f"--max-body-mb)", "invalid_request_error"), status_code=413)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_body_bytes:
            return too_large
        chunks, size = [], 0
        async for chunk in request.stream():  # counted as it arrives: a chunked body has no length up front
            size += len(chunk)
            if size > max_body_bytes:
                return too_large
            chunks.append(chunk)
        raw = b"".join(chunks)
        try:
            body = await asyncio.to_thread(json.loads, raw) if size > PARSE_OFF_LOOP_BYTES else json.loads(raw)
        except (ValueError, UnicodeDecodeError):  # JSONDecodeError, and numbers past Python's 4,300-digit limit
            return JSONResponse(_error("the body is not JSON", "invalid_request_error"), status_code=400)
        except RecursionError:
            return JSONResponse(_error("the body is nested too deeply", "invalid_request_error"), status_code=400)
        status, data, headers = await server.complete(body, request.headers.get("x-distill-category"))
        return JSONResponse(data, status_code=status, headers=headers)

    return app


def serve_cli(args) -> int:
    import uvicorn

    from distill.fleet.router import registered_router

    _setup_logging()
    if args.alpha is not None and not 0 <= args.alpha <= 1:
        raise DistillError(f"--alpha is a weight between 0 and 1, got {args.alpha}")
    members = fleet_members(args.fleet)
    router = None
    router_dir = None if args.no_router else (args.router or registered_router(args.fleet))
    if router_dir is not None:
        from distill.fleet.router import load_router

        router = load_router(router_dir, members)
    elif args.alpha is not None:
        log.warning("--alpha %g is ignored: there is no router (fit one with `distill fleet fit`)", args.alpha)
    if args.max_body_mb <= 0:
        raise DistillError(f"--max-body-mb must be positive, got {args.max_body_mb}")
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise DistillError(f"--api-key-env {args.api_key_env}: the environment variable is not set or empty")
    elif not _is_loopback(args.host):
        log.warning("listening on %s without --api-key-env: anyone who can reach this address can use the fleet "
                    "(and its members' keys)", args.host)
    server = FleetServer(members, router, alpha=args.alpha, timeout_s=args.timeout, down_retry_s=args.down_retry_s,
                         max_tools=args.max_tools, schema_cache=args.schema_cache, abstain_policy=args.abstain_policy)
    server.warm_up()
    order = "router " + str(router_dir) + f" (alpha {args.alpha if args.alpha is not None else router.alpha:g})" \
        if router else "cheapest first (no router)"
    log.info("serving %d members (%s) on http://%s:%d/v1; order: %s", len(server.members),
             ", ".join(f"{m.name} -> {m.endpoint['base_url']}" for m in server.members), args.host, args.port, order)
    app = create_app(server, max_body_bytes=int(args.max_body_mb * 2**20), api_key=api_key)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def add_parser(actions: argparse._SubParsersAction) -> None:
    """`distill fleet serve` (registered under `distill fleet`)."""
    s = actions.add_parser(
        "serve",
        help="OpenAI-compatible endpoint that routes each request to a member's server and applies the cascade",
        description=fill_paragraphs("Serve /v1/chat/completions in front of the members' own OpenAI-compatible servers (each "
        "member's `endpoint: {base_url, model}` in --fleet). The router (from --fleet's `router` section or --router) "
        "picks the first member, the rest of the cost ladder follows (without the members the router expects not to be "
        "worth their cost on the request); an answer that is malformed, calls an unknown "
        "function or fails the tool's JSON Schema escalates to the next member. The answer comes back as the member "
        "sent it, with headers x-distill-member (who answered), x-distill-tried and x-distill-verified. GET "
        "/v1/fleet/stats: counts per member. A member that cannot be reached is logged and skipped for "
        "--down-retry-s seconds. Streaming is refused (the verifier needs the whole answer). Bodies over --max-body-mb get "
        "413, requests with more than --max-tools tools or that are not chat requests get 400, and with --api-key-env "
        "every route but /health needs the bearer key."),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  distill fleet serve --fleet fleet.yaml --port 8080\n"
        "  distill fleet serve --fleet fleet.yaml --port 8080 --alpha 0.7\n"
        "  distill fleet serve --fleet fleet.yaml --port 8080 --host 0.0.0.0 --api-key-env FLEET_KEY   # clients send "
        "Authorization: Bearer $FLEET_KEY\n"
        "  curl -s http://127.0.0.1:8080/v1/fleet/stats",
    )
    s.add_argument("--fleet", required=True, help="fleet file whose members have an `endpoint`")
    s.add_argument("--port", type=int, required=True, help="port to listen on")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s; 0.0.0.0 for every interface)")
    s.add_argument("--router", default=None, help="router folder (default: the one recorded in --fleet)")
    s.add_argument("--no-router", action="store_true", help="ignore any router: plain cascade, cheapest member first")
    s.add_argument("--alpha", type=float, default=None, help="accuracy weight in [0, 1] for routing (default: the "
                   "router's own, from `fleet fit --alpha`)")
    s.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for one member's answer (default: %(default)s)")
    s.add_argument("--abstain-policy", choices=ABSTAIN_POLICIES, default=DEFAULT_ABSTAIN_POLICY,
                   help="what a member's answer without a call does: admitted = ends the cascade only when the member "
                   "is admitted for abstention on the request's category (`fleet admit` records where its no-call "
                   "answers were right), else escalates; accept = always ends it; escalate = never does "
                   "(default: %(default)s)")
    s.add_argument("--down-retry-s", type=float, default=30.0, help="seconds a member that could not be reached is "
                   "skipped before it is tried again (default: %(default)s)")
    s.add_argument("--api-key-env", default=None, metavar="NAME", help="environment variable holding the key clients "
                   "must send as `Authorization: Bearer <key>` (every route but /health; 401 otherwise); set it whenever "
                   "--host is not a loopback address (default: no key)")
    s.add_argument("--max-body-mb", type=float, default=MAX_BODY_MB, help="largest request body accepted, in MB; a "
                   "larger one gets 413 (default: %(default)s)")
    s.add_argument("--max-tools", type=int, default=MAX_TOOLS, help="most tools one request may offer; more gets 400 "
                   "(default: %(default)s, as OpenAI's API)")
    s.add_argument("--schema-cache", type=int, default=SCHEMA_CACHE, metavar="N", help="distinct tool sets whose "
                   "compiled JSON Schemas are kept (least recently used dropped first) (default: %(default)s)")
    s.set_defaults(run=serve_cli)
