"""`distill serve`: one student behind an OpenAI-compatible `/v1/chat/completions` with `tools`.

    distill serve checkpoints/qwen05-sft --port 8000                  # a training run: its base model + LoRA adapter
    distill serve pkg:smollm2-135m-instruct --chat-template hermes_tool   # a packaged model (or a .gguf, Hub id, folder)
    distill serve checkpoints/qwen05-sft --interactive --tools tools.json # try it in the terminal instead

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    r = client.chat.completions.create(model="student", messages=[{"role": "user", "content": "Weather in Oslo?"}],
                                       tools=[{"type": "function", "function": {"name": "get_weather", ...}}])
    r.choices[0].message.tool_calls            # [{"id", "type": "function", "function": {"name", "arguments"}}]
    r.choices[0].message.model_extra["raw"]    # the model's text, as generated

The answer is the one `distill eval` gives for the same request: the model is loaded by the same backend
(data_gen.backends.hf_backend: a training run's adapter applied with peft and folded into float32 weights, the
tokenizer and chat template the run saved, `pkg:` and `.gguf` models through the local-model resolver), the prompt
is rendered the same way (the chat template with `tools`, or the few-shot completion prompt for a base model
without one), decoding is greedy unless the request sets a temperature, and the text is parsed by the verifier's
parser (eval.parse). `tool_calls` holds the parsed calls; `content` is the text when it holds no call (an
abstention, or output that does not parse, so a client or `distill fleet serve` sees it as it is); the message
carries the raw text in `raw`, and each choice the parse outcome in `distill` ({"parse": "calls" | "no_call" |
"malformed", "format", "detail"}). Requests are answered one at a time (one model, one generate() call each).

Why FastAPI + uvicorn around the project's own backend rather than `transformers serve` on a merged folder:
`transformers serve` reads tool calls only for the model families it knows (its own parser, not the verifier's),
applies no LoRA adapter (a merge first would drop the run's saved tokenizer unless copied by hand), has no prompt
for a base model without a chat template (Gemma 3 270M), and would answer with different text than `distill eval`
measured. `distill fleet serve` already runs on FastAPI and uvicorn, so this adds no dependency.

Bad requests get a 4xx with an OpenAI-style error body naming what is wrong (no messages, a malformed message or
tool, a tool whose `parameters` is not JSON Schema, a prompt longer than the model's context, `stream` or `n` > 1,
a body over --max-body-mb: 413), and the server keeps serving.
"""

# No `from __future__ import annotations` here: FastAPI reads the handlers' annotations (`request: Request`) at
# runtime, and the lazily imported Request would not resolve from a string.
import argparse
import asyncio
import json
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from eval.io import DistillError

ROLES = ("system", "developer", "user", "assistant", "tool")
DEFAULT_MAX_BODY_MB = 8.0  # the same limits as `distill fleet serve`
DEFAULT_MAX_TOOLS = 128


@dataclass
class ServeConfig:
    """What `distill serve` serves and how; `add_parser` declares one flag per field."""

    model: str = field(metadata={"help": "a training run folder (LoRA adapter + run.json), or a model: Hub id, local "
                                         "folder, .gguf file or pkg:NAME"})
    base_model: str | None = field(default=None, metadata={"help": "base model of an adapter folder (default: the one "
                                                                      "its run.json or adapter_config.json names)"})
    served_name: str | None = field(default=None, metadata={"help": "model name in responses and /v1/models "
                                                                       "(default: MODEL as given)"})
    host: str = field(default="127.0.0.1", metadata={"help": "interface to bind; 0.0.0.0 exposes it to the network"})
    port: int = field(default=8000, metadata={"help": "TCP port"})
    chat_template: str | None = field(default=None, metadata={"help": "chat template replacing the model's own: "
                                                                         "hermes_tool, gemma3_tool or a Jinja file"})
    prompt_style: str = field(default="hermes", metadata={"help": "answer format asked of a base model without a chat "
                                                                  "template (few-shot prompt): hermes or python"})
    device: str = field(default="auto", metadata={"help": "cuda, cuda:1, mps, cpu or auto"})
    dtype: str = field(default="auto", metadata={"help": "weights: auto, bfloat16, float16 or float32"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow model code from the Hub"})
    temperature: float = field(default=0.0, metadata={"help": "default sampling temperature when a request sets none; 0 "
                                                              "is greedy, as `distill eval`"})
    max_new_tokens: int = field(default=512, metadata={"help": "most tokens generated per answer; a request's max_tokens "
                                                               "is capped at this"})
    max_body_mb: float = field(default=DEFAULT_MAX_BODY_MB, metadata={"help": "largest request body accepted, in "
                                                                                    "MB (2^20 bytes); larger gets 413"})
    max_tools: int = field(default=DEFAULT_MAX_TOOLS, metadata={"help": "most tools accepted in one request"})
    interactive: bool = field(default=False, metadata={"help": "chat with the model in this terminal instead of serving"})
    tools: str | None = field(default=None, metadata={"help": "with --interactive: a JSON file with the tools offered "
                                                                 "(a list of OpenAI tools, or a task record)"})

    def check(self) -> None:
        if not 0 < self.port < 65536:
            raise DistillError(f"--port must be between 1 and 65535, got {self.port}")
        if self.max_body_mb <= 0:
            raise DistillError(f"--max-body-mb must be positive, got {self.max_body_mb}")
        if self.max_new_tokens < 1:
            raise DistillError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise DistillError(f"--temperature must be >= 0, got {self.temperature}")
        if self.tools and not self.interactive:
            raise DistillError("--tools is for --interactive; a server takes the tools of each request")


class BadRequest(Exception):
    """A request the server refuses, with the HTTP status and a message for the client."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# --- the request, checked ---------------------------------------------------------------------------------------------


def _text_content(content, where: str):
    """A message's content as the string chat templates expect (OpenAI text parts joined), or None."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for i, p in enumerate(content):
            if not isinstance(p, dict) or p.get("type") != "text" or not isinstance(p.get("text"), str):
                raise BadRequest(f"{where}.content[{i}]: only text parts ({{\"type\": \"text\", \"text\": ...}}) are "
                                 f"supported")
            parts.append(p["text"])
        return "\n".join(parts)
    raise BadRequest(f"{where}.content must be a string, a list of text parts or null, got {type(content).__name__}")


def check_messages(messages) -> list[dict]:
    """The request's messages, checked and with content parts joined into strings."""
    if not isinstance(messages, list) or not messages:
        raise BadRequest("the request needs a non-empty `messages` list")
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise BadRequest(f"{where} must be an object with a `role`")
        if m.get("role") not in ROLES:
            raise BadRequest(f"{where}.role must be one of {', '.join(ROLES)}, got {m.get('role')!r}")
        m = {**m, "content": _text_content(m.get("content"), where)}
        calls = m.get("tool_calls")
        if calls is not None:
            if m["role"] != "assistant" or not isinstance(calls, list):
                raise BadRequest(f"{where}.tool_calls must be a list, on an assistant message")
            for j, c in enumerate(calls):
                fn = c.get("function") if isinstance(c, dict) else None
                if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) \
                        or not isinstance(fn.get("arguments", "{}"), (str, dict)):
                    raise BadRequest(f"{where}.tool_calls[{j}] must be {{\"type\": \"function\", \"function\": "
                                     f"{{\"name\": str, \"arguments\": JSON string}}}}")
        out.append(m)
    return out


def check_tools(tools, max_tools: int) -> list[dict]:
    """The request's tools, each checked by the verifier's schema compiler (eval.schema): a function tool with a
    name whose `parameters` is a JSON Schema object schema."""
    from eval.schema import SchemaError, compile_tool

    if tools is None:
        return []
    if not isinstance(tools, list):
        raise BadRequest(f"`tools` must be a list of function tools, got {type(tools).__name__}")
    if len(tools) > max_tools:
        raise BadRequest(f"{len(tools)} tools in one request; this server accepts at most {max_tools} (--max-tools)")
    names = set()
    for i, tool in enumerate(tools):
        try:
            spec = compile_tool(tool)
        except SchemaError as e:
            raise BadRequest(f"tools[{i}]: {e}") from None
        except RecursionError:
            raise BadRequest(f"tools[{i}]: the schema is nested too deeply") from None
        if spec.name in names:
            raise BadRequest(f"tools[{i}]: duplicate tool name {spec.name!r}")
        names.add(spec.name)
    return tools


@dataclass
class ChatRequest:
    messages: list[dict]
    tools: list[dict]
    temperature: float
    top_p: float
    max_new_tokens: int
    seed: int | None


def _number(body: dict, key: str, kind, low: float, high: float | None = None):
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not isinstance(v, int)):
        raise BadRequest(f"`{key}` must be {'an integer' if kind is int else 'a number'}, got {v!r}")
    if v < low or (high is not None and v > high):
        raise BadRequest(f"`{key}` must be between {low} and {high}, got {v}" if high is not None
                         else f"`{key}` must be at least {low}, got {v}")
    return kind(v)


def parse_request(body, config: ServeConfig) -> ChatRequest:
    """A chat completion request checked against what this server does; BadRequest says what is wrong."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object (an OpenAI chat completion request)")
    if body.get("stream"):
        raise BadRequest("`stream` is not supported: the answer is parsed into tool calls once it is complete")
    n = body.get("n", 1)
    if n not in (1, None):
        raise BadRequest("`n` must be 1: one answer per request")
    messages = check_messages(body.get("messages"))
    tools = check_tools(body.get("tools"), config.max_tools)
    choice = body.get("tool_choice")
    if choice not in (None, "auto", "none"):
        raise BadRequest("`tool_choice` may be \"auto\" or \"none\": the student decides whether and what to call")
    if choice == "none":
        tools = []
    temperature = _number(body, "temperature", float, 0, 2)
    top_p = _number(body, "top_p", float, 0, 1)
    max_tokens = _number(body, "max_completion_tokens", int, 1) or _number(body, "max_tokens", int, 1)
    seed = _number(body, "seed", int, -(2**63))
    return ChatRequest(
        messages=messages,
        tools=tools,
        temperature=config.temperature if temperature is None else temperature,
        top_p=1.0 if top_p is None or top_p == 0 else top_p,
        max_new_tokens=min(max_tokens or config.max_new_tokens, config.max_new_tokens),
        seed=None if seed is None else seed % 2**31,
    )


# --- the model ----------------------------------------------------------------------------------------------------------


def model_and_adapter(config: ServeConfig) -> tuple[str, str | None]:
    """(base model, adapter folder or None) for MODEL: a folder with adapter_config.json is a LoRA adapter (a
    training run); anything else is a model for the local-model resolver and from_pretrained."""
    from distill.evaluate import base_model_of

    p = Path(config.model)
    if p.is_dir() and (p / "adapter_config.json").is_file():
        return config.base_model or base_model_of(p), str(p)
    if config.base_model:
        raise DistillError(f"--base-model is for an adapter folder; {config.model} has no adapter_config.json")
    if p.is_dir() and not (p / "config.json").is_file():
        raise DistillError(f"{config.model}: a folder with neither adapter_config.json (a training run) nor config.json "
                           f"(a model)")
    return config.model, None


def _context_length(lm) -> int | None:
    cfg = getattr(lm, "config", None)
    for c in (cfg, getattr(cfg, "text_config", None)):
        n = getattr(c, "max_position_embeddings", None)
        if isinstance(n, int) and n > 0:
            return n
    return None


class Student:
    """One loaded model answering chat requests one at a time, through the backend `distill eval` uses."""

    def __init__(self, config: ServeConfig):
        from data_gen.generate import BackendConfig, build_backend

        self.config = config
        model, adapter = model_and_adapter(config)
        self.name = config.served_name or config.model
        self.backend = build_backend(BackendConfig(
            backend="hf", model=model, adapter=adapter, temperature=config.temperature, max_new_tokens=config.max_new_tokens,
            prompt_style=config.prompt_style, batch_size=1, chat_template=config.chat_template, device=config.device,
            dtype=config.dtype, trust_remote_code=config.trust_remote_code,
        ))
        self.base_sampling = self.backend.sampling
        self.context = _context_length(self.backend.lm)
        self._lock = threading.Lock()  # one generate() at a time: the backend's sampling is set per request

    def prompt_tokens(self, req: ChatRequest) -> int:
        from data_gen.prompting import render_prompt

        text, completion = render_prompt(self.backend.tokenizer, req.messages, req.tools, self.backend.prompt_style)
        return len(self.backend.tokenizer(text, add_special_tokens=completion)["input_ids"])

    def answer(self, req: ChatRequest):
        """The backend's Result for one request (raw text, finish reason, token counts)."""
        from data_gen.backends.base import Request

        try:
            n = self.prompt_tokens(req)
        except Exception as e:  # a chat template refusing these messages (jinja2 raises its own errors)
            raise BadRequest(f"the chat template cannot render these messages: {type(e).__name__}: {e}") from None
        if self.context is not None and n + req.max_new_tokens > self.context:
            raise BadRequest(f"the prompt is {n} tokens; with max_tokens {req.max_new_tokens} it exceeds the model's "
                             f"context of {self.context} tokens")
        with self._lock:
            self.backend.sampling = replace(self.base_sampling, temperature=req.temperature, top_p=req.top_p,
                                            max_new_tokens=req.max_new_tokens, seed=req.seed)
            try:
                [result] = self.backend.generate_batch([Request("request", 0, req.messages, req.tools, seed=req.seed)])
            finally:
                self.backend.sampling = self.base_sampling
        return result


def completion_body(name: str, result, parsed) -> dict:
    """The OpenAI chat.completion object for one answer: parsed calls as `tool_calls`, the raw text in `raw`."""
    from eval.parse import CALLS

    message = {"role": "assistant", "content": None if parsed.status == CALLS else (result.raw or "")}
    if parsed.status == CALLS:
        message["tool_calls"] = [
            {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
             "function": {"name": c["name"], "arguments": json.dumps(c["arguments"], ensure_ascii=False)}}
            for c in parsed.calls
        ]
    message["raw"] = result.raw or ""
    finish = "tool_calls" if parsed.status == CALLS else ("length" if result.finish_reason == "length" else "stop")
    usage = {"prompt_tokens": result.prompt_tokens or 0, "completion_tokens": result.completion_tokens or 0}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": name,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None,
                     "distill": {"parse": parsed.status, "format": parsed.format, "detail": parsed.detail,
                                 "latency_s": result.latency_s}}],
        "usage": usage,
    }


def _error(message: str, kind: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


# --- the web app -------------------------------------------------------------------------------------------------------


class BodyLimit:
    """ASGI middleware refusing request bodies over `limit` bytes with 413: at once by Content-Length when the
    client declares one, else while reading (chunked uploads): the body is read here, at most `limit` bytes, and
    handed to the app whole. Hand-written: neither uvicorn nor Starlette/FastAPI has a request body limit
    (Starlette's limits apply to multipart forms only)."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await self._refuse(send)
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as the server would say it

        await self.app(scope, replay, send)

    async def _refuse(self, send):
        body = json.dumps(_error(f"the request body is larger than this server's limit of {self.limit / 2**20:g} MB "
                                 f"(--max-body-mb)", "request_too_large")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def create_app(student: Student, config: ServeConfig):
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    from eval.parse import parse_output

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="distill-serve")  # generation off the event loop

    @asynccontextmanager
    async def lifespan(app):
        yield
        pool.shutdown(wait=False)

    app = FastAPI(title="distill serve", lifespan=lifespan)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": student.name, "object": "model", "owned_by": "distill"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):  # ValueError covers JSONDecodeError and undecodable bytes
            return JSONResponse(_error("the body is not valid JSON"), status_code=400)
        try:
            req = parse_request(body, config)
            result = await asyncio.get_running_loop().run_in_executor(pool, student.answer, req)
        except BadRequest as e:
            return JSONResponse(_error(str(e)), status_code=e.status)
        except Exception as e:  # the model failed on this request; the server stays up for the next one
            print(f"distill serve: request failed: {type(e).__name__}: {e}", file=sys.stderr)
            return JSONResponse(_error(f"generation failed: {type(e).__name__}", "server_error"), status_code=500)
        return JSONResponse(completion_body(student.name, result, parse_output(result.raw)))

    return BodyLimit(app, int(config.max_body_mb * 2**20))


# --- the terminal ------------------------------------------------------------------------------------------------------


def load_tools_file(path: str) -> list[dict]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise DistillError(f"--tools {path}: {e.strerror}") from None
    except ValueError as e:
        raise DistillError(f"--tools {path}: not valid JSON ({e})") from None
    tools = data.get("tools") if isinstance(data, dict) else data
    try:
        return check_tools(tools, DEFAULT_MAX_TOOLS * 100)
    except BadRequest as e:
        raise DistillError(f"--tools {path}: {e}") from None


def interactive(student: Student, config: ServeConfig, stdin=None, stdout=None) -> int:
    """A conversation in the terminal: each line is a user turn; the answer's text and parsed calls are printed.
    /reset starts over, /quit (or end of input) leaves."""
    from eval.parse import CALLS, parse_output

    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    tools = load_tools_file(config.tools) if config.tools else []
    print(f"distill serve: chatting with {student.name} ({len(tools)} tools); /reset starts over, /quit leaves",
          file=stdout, flush=True)
    messages: list[dict] = []
    while True:
        print("> ", end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line or line.strip() == "/quit":
            return 0
        line = line.strip()
        if not line:
            continue
        if line == "/reset":
            messages = []
            continue
        messages.append({"role": "user", "content": line})
        req = ChatRequest(messages, tools, config.temperature, 1.0, config.max_new_tokens, None)
        try:
            result = student.answer(req)
        except BadRequest as e:
            print(f"refused: {e}", file=stdout, flush=True)
            messages.pop()
            continue
        parsed = parse_output(result.raw)
        print(result.raw, file=stdout)
        if parsed.status == CALLS:
            for c in parsed.calls:
                print(f"  -> call {c['name']}({json.dumps(c['arguments'], ensure_ascii=False)})", file=stdout)
            messages.append({"role": "assistant", "content": None, "tool_calls": [
                {"type": "function", "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])}}
                for c in parsed.calls]})
        else:
            print(f"  ({parsed.status}{': ' + parsed.detail if parsed.detail else ''})", file=stdout)
            messages.append({"role": "assistant", "content": result.raw or ""})
        stdout.flush()


# --- the command ---------------------------------------------------------------------------------------------------------


def serve(config: ServeConfig) -> int:
    config.check()
    t0 = time.perf_counter()
    student = Student(config)
    where = f"{student.backend.model}" + (f" + {student.backend.adapter}" if student.backend.adapter else "")
    print(f"distill serve: loaded {where} on {student.backend.device} in {time.perf_counter() - t0:.1f} s",
          file=sys.stderr, flush=True)
    if config.interactive:
        return interactive(student, config)
    import uvicorn

    print(f"distill serve: {student.name} on http://{config.host}:{config.port}/v1 (chat/completions, models; "
          f"/health)", file=sys.stderr, flush=True)
    uvicorn.run(create_app(student, config), host=config.host, port=config.port, log_level="warning")
    return 0


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    return ServeConfig(**{f: getattr(args, f) for f in ServeConfig.__dataclass_fields__})


def serve_cli(args: argparse.Namespace) -> int:
    return serve(config_from_args(args))


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve one student behind an OpenAI-compatible /v1/chat/completions with tools (or chat in the terminal)",
        description="Serve one model, usually a student (a training run: its base model plus LoRA adapter, with the "
        "chat template it trained with), behind an OpenAI-compatible /v1/chat/completions that takes `tools` and "
        "answers with `tool_calls` parsed by the verifier's parser, plus the raw text. Loads and prompts the model "
        "exactly as `distill eval` does, so a greedy answer here is the answer eval scored. Also /v1/models and "
        "/health. --interactive chats in the terminal instead.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""examples:
  distill serve checkpoints/qwen05-sft --port 8000
  distill serve pkg:smollm2-135m-instruct --chat-template hermes_tool --device cpu --dtype float32
  distill serve checkpoints/qwen05-sft --interactive --tools tools.json
  curl -s http://127.0.0.1:8000/v1/chat/completions -H 'content-type: application/json' \\
      -d '{"model": "m", "messages": [{"role": "user", "content": "Weather in Oslo?"}], "tools": [...]}'""",
    )
    fields = ServeConfig.__dataclass_fields__
    p.add_argument("model", metavar="CHECKPOINT|MODEL", help=fields["model"].metadata["help"])
    for name, f in fields.items():
        if name == "model":
            continue
        flag = "--" + name.replace("_", "-")
        helptext = f.metadata["help"]
        if f.type is bool:
            p.add_argument(flag, action="store_true", help=helptext)
            continue
        kind = f.type if f.type in (int, float) else str
        says_default = f.default is None or "default" in helptext  # its help already tells what unset means
        p.add_argument(flag, type=kind, default=f.default,
                       help=helptext if says_default else f"{helptext} (default: %(default)s)")
    p.set_defaults(run=serve_cli)
