"""The small interface every teacher backend implements.

    backend = OpenAIBackend(model="Qwen/Qwen2.5-72B-Instruct", base_url="http://127.0.0.1:8000/v1", sampling=s)
    async for result in backend.generate([Request("simple_python_12", 0, messages, tools, seed=7)]):
        result.raw, result.tool_calls, result.error   # one Result per Request, in completion order

A backend turns Requests (one per task and sample) into Results, yielding each as soon as it is done so that
`data_gen.generate` can append it to the traces file at once (a crash then loses only in-flight work). A
request that failed after the backend's own retries comes back as a Result with `error` set (a short kind
such as "timeout" or "http_500", counted in the summary and retried by the next run); a failure that dooms
every request (server down, bad key, unknown model) raises DistillError instead.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Sampling:
    """Sampling settings shared by all backends; recorded on every trace."""

    temperature: float = 0.7
    top_p: float = 1.0
    max_new_tokens: int = 512
    seed: int | None = None

    def to_dict(self) -> dict:
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_new_tokens": self.max_new_tokens,
            "seed": self.seed,
        }


@dataclass(frozen=True)
class Request:
    task_id: str
    sample: int
    messages: list[dict]
    tools: list[dict]
    seed: int | None = None  # per-request seed (see derive_seed), None for unseeded sampling


@dataclass
class Result:
    request: Request
    raw: str | None = None  # the model's text (message content), "" when it only returned structured calls
    raw_tool_calls: list[dict] | None = None  # OpenAI-structured `message.tool_calls` when the server gave them
    finish_reason: str | None = None
    latency_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error: str | None = None  # failure kind after retries: "timeout", "http_429", "http_500", ...
    error_detail: str = ""


class Backend(Protocol):
    name: str  # "openai" | "hf" | "vllm", recorded on every trace
    model: str  # the model name written on every trace; part of the resume key
    sampling: Sampling

    def generate(self, requests: Iterable[Request]) -> AsyncIterator[Result]:
        """Yield one Result per request as each finishes (any order). May be called again for another run."""
        ...


def derive_seed(seed: int | None, task_id: str, sample: int) -> int | None:
    """A distinct, stable seed per (task, sample). One seed for every request would make a server that honours
    `seed` return the same answer N times; a seed derived from the key keeps samples different and a rerun
    (or a resumed run) reproducible. crc32 rather than hash(): Python salts str hashes per process."""
    if seed is None:
        return None
    return (seed * 1_000_003 + zlib.crc32(f"{task_id}\0{sample}".encode())) % 2**31
