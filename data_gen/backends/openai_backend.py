"""Teacher traces from any OpenAI-compatible server (vLLM, SGLang, TGI, llama.cpp, `transformers serve`, hosted).

    backend = OpenAIBackend("Qwen/Qwen2.5-72B-Instruct", base_url="http://127.0.0.1:8000/v1",
                            sampling=Sampling(temperature=0.7), concurrency=32, timeout_s=120)
    async for result in backend.generate(requests): ...

One chat completion per (task, sample), `concurrency` in flight, each with its own derived seed (a server
that honours `seed` would otherwise return one answer N times; `n` is not used, as many servers ignore it).
Retries are the openai client's own:
exponential backoff from 0.5 s up to 8 s with jitter, on 408/409/429/5xx, timeouts and dropped connections,
honouring Retry-After (up to two minutes); `timeout_s` bounds each attempt. Failure kinds:
- a request still failing after its retries (timeout, 429, 5xx, a 400 for one prompt) comes back as a Result
  with `error`, is counted, and is retried by the next run;
- a server that is down, a rejected key or an unknown model/URL (connection refused, 401, 403, 404) dooms
  every request, so it raises DistillError at once: a probe of GET /models before the first request finds a
  down server within seconds instead of after every request's retries.
The API key is read from an environment variable and handed to the client only; it is never printed, and
messages name the variable, not its value.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable

from data_gen.backends.base import Request, Result, Sampling
from data_gen.prompting import with_tools_in_prompt
from eval.io import DistillError
from eval.secrets import register_secret, scrub

PROBE_TIMEOUT_S = 5.0
# In-flight requests per HTTP client (connection pool); see generate().
CONNECTIONS_PER_CLIENT = 16
# Status codes that no retry can fix and that every request would meet: stop the run with a clear error.
_FATAL_STATUS = {401: "rejected the API key", 403: "refused access", 404: "has no such model or endpoint"}


class OpenAIBackend:
    name = "openai"

    def __init__(
        self,
        model: str,
        *,
        base_url: str,
        sampling: Sampling,
        api_key_env: str = "OPENAI_API_KEY",
        tools_in_prompt: bool = False,
        prompt_style: str = "hermes",
        concurrency: int = 16,
        timeout_s: float = 120.0,
        max_retries: int = 5,
        probe: bool = True,
    ):
        try:
            import openai
            from openai.types.chat import ChatCompletion
        except ImportError:
            raise DistillError("--backend openai needs the openai client: pip install 'distill[openai]'") from None
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.sampling = sampling
        self.api_key_env = api_key_env
        self.tools_in_prompt = tools_in_prompt
        self.prompt_style = prompt_style
        self.concurrency = max(1, concurrency)
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.probe = probe
        # HTTP statuses the server answered with, retries included (the summary's "HTTP errors seen" line).
        self.status_counts: Counter[int] = Counter()
        self._openai = openai
        self._completion_type = ChatCompletion

    def _make_client(self):
        openai = self._openai
        # Local servers take any key; the client insists on one, so a placeholder stands in when the variable
        # is unset (a server that needs a real key then answers 401, reported as such).
        api_key = os.environ.get(self.api_key_env) or "EMPTY"
        register_secret(api_key)  # scrubbed from every message, whatever the variable's name (--api-key-env)

        async def count_status(response) -> None:
            self.status_counts[response.status_code] += 1

        return openai.AsyncOpenAI(
            base_url=self.base_url,
            api_key=api_key,
            timeout=self.timeout_s,
            max_retries=self.max_retries,
            # The SDK's own httpx client with its defaults, plus a hook that sees every attempt's status.
            http_client=openai.DefaultAsyncHttpxClient(event_hooks={"response": [count_status]}),
        )

    def _where(self) -> str:
        return f"the server at {self.base_url}"

    async def check_server(self, client) -> None:
        """GET /models once, without retries and with a short timeout: a server that is down fails here within
        seconds. A 404 passes (some servers have no /models); a model missing from the list only warns, since
        hosted APIs accept aliases they do not list."""
        openai = self._openai
        client = client.with_options(max_retries=0, timeout=min(PROBE_TIMEOUT_S, self.timeout_s))
        try:
            page = await client.models.list()
        except openai.APITimeoutError:
            raise DistillError(
                f"{self._where()} did not answer GET /models within {PROBE_TIMEOUT_S:.0f} s; is it up and is "
                f"--base-url right?"
            ) from None
        except openai.APIConnectionError as e:
            raise DistillError(
                f"cannot reach {self._where()} ({_cause(e)}); is the server running and is --base-url right "
                f"(most servers serve under /v1)?"
            ) from None
        except openai.APIStatusError as e:
            if e.status_code in (401, 403):
                raise DistillError(self._fatal_message(e.status_code)) from None
            return  # 404 (no /models) or a transient 5xx: the completions themselves will tell
        ids = [m.id for m in getattr(page, "data", []) or []]
        if ids and self.model not in ids:
            import sys

            print(
                f"distill generate: warning: {self._where()} lists {', '.join(ids[:5])}"
                f"{' ...' if len(ids) > 5 else ''} but not {self.model!r}",
                file=sys.stderr,
            )

    def _fatal_message(self, status: int) -> str:
        msg = f"{self._where()} {_FATAL_STATUS[status]} (HTTP {status})"
        if status in (401, 403):
            msg += f"; set the key in ${self.api_key_env} (or name another variable with --api-key-env)"
        else:
            msg += f" for model {self.model!r}; check --model and --base-url (most servers serve under /v1)"
        return msg

    def build_request(self, req: Request) -> dict:
        """The keyword arguments of chat.completions.create for one request."""
        messages = req.messages
        kwargs: dict = {"model": self.model}
        if req.tools and self.tools_in_prompt:
            messages = with_tools_in_prompt(messages, req.tools, self.prompt_style)
        elif req.tools:
            kwargs["tools"] = req.tools
        kwargs["messages"] = messages
        kwargs["temperature"] = self.sampling.temperature
        kwargs["top_p"] = self.sampling.top_p
        # max_tokens rather than max_completion_tokens: the open-source servers all take it.
        kwargs["max_tokens"] = self.sampling.max_new_tokens
        if req.seed is not None:
            kwargs["seed"] = req.seed
        return kwargs

    async def _one(self, client, req: Request) -> Result:
        openai = self._openai
        start = time.perf_counter()
        try:
            # client.post() rather than chat.completions.create(): the same request, retries, timeouts and auth,
            # without create()'s walk of every argument against the SDK's TypedDicts, which for a BFCL tool
            # schema cost more client CPU than the HTTP exchange itself (benchmarks/generate_overhead.py).
            resp = await client.post(
                "/chat/completions", body=self.build_request(req), cast_to=self._completion_type
            )
        except openai.APITimeoutError:
            return Result(req, error="timeout", error_detail=f"no answer within {self.timeout_s:g} s")
        except openai.APIConnectionError as e:
            # The connection kept failing through every retry: the server went away mid-run.
            raise DistillError(
                f"lost {self._where()} ({_cause(e)}) after {self.max_retries} retries"
            ) from None
        except openai.APIStatusError as e:
            if e.status_code in _FATAL_STATUS:
                raise DistillError(self._fatal_message(e.status_code)) from None
            return Result(req, error=f"http_{e.status_code}", error_detail=_status_detail(e))
        latency = time.perf_counter() - start
        if not resp.choices:
            return Result(req, error="empty_response", error_detail="the server returned no choices")
        choice = resp.choices[0]
        message = choice.message
        tool_calls = [tc.model_dump(exclude_none=True) for tc in message.tool_calls] if message.tool_calls else None
        usage = resp.usage
        return Result(
            req,
            raw=message.content or "",
            raw_tool_calls=tool_calls,
            finish_reason=choice.finish_reason,
            latency_s=round(latency, 4),
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
        )

    async def generate(self, requests: Iterable[Request]) -> AsyncIterator[Result]:
        """`concurrency` workers share the request iterator, each with one request in flight, and hand results
        over a queue as they land. Workers (not one task per request) keep memory flat for 100k-request runs.

        Clients are made per call (an async client belongs to the event loop it first ran on) and shared by at
        most CONNECTIONS_PER_CLIENT workers: httpx's connection pool checks every pooled connection on every
        request, so one pool of 256 connections costs 16 times more CPU per request than pools of 16."""
        n_clients = -(-self.concurrency // CONNECTIONS_PER_CLIENT)
        clients = [self._make_client() for _ in range(n_clients)]
        results: asyncio.Queue = asyncio.Queue()
        done = object()
        todo = iter(requests)

        async def worker(client) -> None:
            try:
                for req in todo:  # one shared iterator: each request goes to exactly one worker
                    results.put_nowait(await self._one(client, req))
            except Exception as e:  # fatal (DistillError) or a bug: handed to the consumer, which raises it
                results.put_nowait(e)
            finally:
                results.put_nowait(done)

        workers: list[asyncio.Task] = []
        try:
            if self.probe:
                await self.check_server(clients[0])
            workers = [
                asyncio.create_task(worker(clients[i // CONNECTIONS_PER_CLIENT])) for i in range(self.concurrency)
            ]
            running = len(workers)
            while running:
                item = await results.get()
                if item is done:
                    running -= 1
                elif isinstance(item, Exception):
                    raise item
                else:
                    yield item
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            for client in clients:
                await client.close()


def _cause(e: BaseException) -> str:
    """The innermost cause of a connection error, e.g. 'ConnectError: [Errno 111] Connection refused'."""
    while e.__cause__ is not None:
        e = e.__cause__
    text = scrub(str(e).strip())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _status_detail(e, limit: int = 300) -> str:
    """The server's own words for an HTTP error: the response body (FastAPI-style `detail` bodies included,
    which the SDK's message leaves out), shortened to one line, secrets scrubbed (a server may echo the request's
    headers, `Authorization: Bearer <key>` included)."""
    try:
        text = e.response.text
    except Exception:  # a streamed or unread body
        text = ""
    text = scrub(" ".join((text or str(e)).split()))
    return text if len(text) <= limit else text[: limit - 3] + "..."
