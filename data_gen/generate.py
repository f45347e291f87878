"""Sample teacher (or student) traces for every task, resumably: `distill generate` and its Python API.

    distill generate --tasks tasks.jsonl --backend openai --base-url http://127.0.0.1:8000/v1 \
        --model Qwen/Qwen2.5-72B-Instruct --samples 8 --temperature 0.7 --out traces.jsonl

    from data_gen.generate import generate
    from data_gen.backends.openai_backend import OpenAIBackend
    backend = OpenAIBackend("Qwen/Qwen2.5-72B-Instruct", base_url="http://127.0.0.1:8000/v1", sampling=Sampling())
    summary = generate("tasks.jsonl", backend, "traces.jsonl", samples=8)

Each trace is one line (the trace format of docs/tasks.md, plus `backend`, `sampling` and, when the server returned them,
`raw_tool_calls`), appended and flushed the moment its request finishes. Crash safety comes from the file
alone: a rerun of the same command reads the (task_id, model, sample) keys already written, skips them and
generates the rest; a half-written last line (a killed writer) is cut off before appending, so it is neither
duplicated nor fatal. A request that failed after its retries is not written: it is counted in the summary
and the next run retries it. An advisory lock on the output file stops two runs from appending to it at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from data_gen.backends.base import Backend, Request, Result, Sampling, derive_seed
from data_gen.prompting import resolve_chat_template
from eval.io import DistillError, read_jsonl
from eval.secrets import scrub

# fsync at most this often: flush() after every line already survives a killed process (the data is in the OS);
# fsync adds survival of a power cut at a bounded cost instead of one disk sync per trace.
FSYNC_EVERY_S = 2.0


@dataclass
class Summary:
    out: str
    model: str
    total: int  # tasks x samples asked for
    already: int  # traces found in the file and skipped
    written: int = 0
    failed: Counter = field(default_factory=Counter)  # failure kind -> requests not written
    failure_examples: dict = field(default_factory=dict)  # kind -> one detail message
    outputs: Counter = field(default_factory=Counter)  # parse status of written traces: calls/no_call/malformed
    prompt_tokens: int = 0
    completion_tokens: int = 0
    elapsed_s: float = 0.0
    dropped_tail_bytes: int = 0
    http_statuses: dict = field(default_factory=dict)  # openai backend: every attempt's status, retries included

    @property
    def missing(self) -> int:
        return self.total - self.already - self.written

    def format(self) -> str:
        rate = self.written / self.elapsed_s if self.elapsed_s > 0 else 0.0
        lines = [
            f"distill generate: {self.written} new traces of {self.model} in {self.elapsed_s:.1f} s ({rate:.2f}/s), "
            f"{self.already} already in {self.out}; {self.already + self.written}/{self.total} done",
            f"  tokens: {self.prompt_tokens:,} prompt, {self.completion_tokens:,} completion",
            "  outputs: " + (", ".join(f"{k} {v}" for k, v in sorted(self.outputs.items())) or "none"),
        ]
        retried = {s: n for s, n in self.http_statuses.items() if s >= 400}
        if retried:
            lines.append("  HTTP errors seen (retries included): " + ", ".join(f"{s} x{n}" for s, n in sorted(retried.items())))
        if self.failed:
            lines.append(
                f"  failed: {sum(self.failed.values())} ("
                + ", ".join(f"{k} {v}" for k, v in self.failed.most_common())
                + "), not written; rerun the same command to retry them"
            )
            for kind, detail in self.failure_examples.items():
                lines.append(f"    {kind}: {scrub(detail)}")  # a server's error body may echo the request's key
        if self.dropped_tail_bytes:
            lines.append(f"  dropped a half-written last line ({self.dropped_tail_bytes} bytes) left by an interrupted run")
        return "\n".join(lines)


def repair_tail(path: Path) -> int:
    """Make the file end with a complete line; return how many bytes of a torn last line were cut.

    A killed writer can leave a last line without its newline. If that line is a whole JSON object only the
    newline is missing and it is added; otherwise the fragment is truncated away, so the rerun writes that
    trace again exactly once. (No prefix of a serialized object parses as an object: its braces only balance
    at the end.)"""
    if not path.exists():
        return 0
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        # Scan back for the last newline in blocks (the file may be large; the torn line is short).
        pos, last_nl = size, -1
        while pos > 0 and last_nl < 0:
            step = min(1 << 16, pos)
            f.seek(pos - step)
            i = f.read(step).rfind(b"\n")
            if i >= 0:
                last_nl = pos - step + i
            pos -= step
        f.seek(last_nl + 1)
        tail = f.read()
        try:
            whole = isinstance(json.loads(tail), dict)
        except ValueError:  # JSONDecodeError and UnicodeDecodeError both
            whole = False
        if whole:
            f.seek(0, os.SEEK_END)
            f.write(b"\n")
            return 0
        f.truncate(last_nl + 1)
        return size - (last_nl + 1)


# How every line `distill generate` writes begins (json.dumps of trace_record, task_id first): a torn last line that
# does not begin so was not left by a killed run of this command.
TRACE_LINE_START = b'{"task_id": '


def _foreign(path: Path, problem: str) -> DistillError:
    return DistillError(f"{problem}; {path} is left untouched: it is not a traces file of `distill generate` (choose "
                        f"another --out, or move the file away)")


def _check_is_trace(rec: dict, where: str) -> None:
    from eval.report import check_trace

    try:
        if "sample" not in rec:
            raise DistillError(f"{where}: trace has no 'sample'")
        check_trace(rec, where)
    except DistillError as e:
        raise DistillError(f"{where}: not a trace ({str(e).removeprefix(where + ': ')})") from None


def check_out_file(path: Path) -> None:
    """Refuse, before anything is created or locked, an --out that cannot be a traces file: a folder, a device, a
    path under a file, an unreadable file, or a file whose first line is not a trace."""

    if path.is_dir():
        raise DistillError(f"{path}: is a folder; --out is the traces .jsonl file to write")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise DistillError(f"{path}: cannot create it: {parent} is a file, not a folder")
    if not path.exists():
        return
    if not path.is_file():
        raise DistillError(f"{path}: exists and is not a regular file")
    try:
        with open(path, "rb") as f:
            first = next((line for line in f if line.strip()), None)
    except OSError as e:
        raise DistillError(f"{path}: cannot read it ({e.strerror or e})") from None
    if first is None or (not first.endswith(b"\n") and first.startswith(TRACE_LINE_START)):
        return  # empty, or only the torn first line of a killed run
    try:
        rec = json.loads(first.decode("utf-8"))
    except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, too many digits
        raise _foreign(path, f"{path}:1: not a JSON line") from None
    if not isinstance(rec, dict):
        raise _foreign(path, f"{path}:1: not a JSON object")
    try:
        _check_is_trace(rec, f"{path}:1")
    except DistillError as e:
        raise _foreign(path, str(e)) from None


def _torn_tail(path: Path) -> bytes | None:
    """The last line of the file when it lacks its newline (what a killed writer leaves), else None."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return None
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return None
        pos, tail = size, b""
        while pos > 0:  # back to the last newline, in blocks (the file may be large; the torn line is short)
            step = min(1 << 16, pos)
            f.seek(pos - step)
            block = f.read(step)
            i = block.rfind(b"\n")
            if i >= 0:
                return block[i + 1:] + tail
            tail, pos = block + tail, pos - step
        return tail


def scan_traces(path: Path) -> tuple[set[tuple[str, str, int]], dict[str, set[str]]]:
    """The (task_id, model, sample) of every trace in the file, and per model the sampling settings its
    traces were made with (as JSON text). A line that is not a trace (a key missing or of the wrong type, a line
    that is not JSON, a torn last line that this command did not write) is a DistillError naming it."""
    keys: set[tuple[str, str, int]] = set()
    settings: dict[str, set[str]] = {}
    if not path.exists():
        return keys, settings
    try:
        lineno = 0
        for lineno, rec in read_jsonl(path, skip_torn_tail=True):
            _check_is_trace(rec, f"{path}:{lineno}")
            key = (rec["task_id"], rec["model"], rec["sample"])
            keys.add(key)
            if "sampling" in rec:
                settings.setdefault(key[1], set()).add(json.dumps(rec["sampling"], sort_keys=True))
        tail = _torn_tail(path)
        if tail is not None and tail.strip() and not tail.startswith(TRACE_LINE_START):
            try:
                whole = isinstance(json.loads(tail), dict)  # a whole line without its newline was yielded above
            except (ValueError, RecursionError):
                whole = False
            if not whole:
                raise DistillError(f"{path}: its last line is not a trace")
    except DistillError as e:
        raise _foreign(path, str(e)) from None
    return keys, settings


def trace_line(record: dict) -> bytes:
    """One JSONL line as UTF-8. A model may answer with a lone surrogate (`"\\ud800"` is legal JSON that a server
    can send back), which UTF-8 cannot encode: such a line is written with \\u escapes instead."""
    text = json.dumps(record, ensure_ascii=False) + "\n"
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return (json.dumps(record, ensure_ascii=True) + "\n").encode("ascii")


def trace_record(result: Result, backend: Backend, parsed) -> dict:
    req = result.request
    if parsed.status == "calls":
        tool_calls = parsed.calls
    elif parsed.status == "no_call":
        tool_calls = []
    else:
        tool_calls = None
    rec = {
        "task_id": req.task_id,
        "model": backend.model,
        "sample": req.sample,
        "raw": result.raw,
        "tool_calls": tool_calls,
        "finish_reason": result.finish_reason,
        "latency_s": result.latency_s,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "backend": backend.name,
        "sampling": backend.sampling.to_dict(),
    }
    if result.raw_tool_calls:
        rec["raw_tool_calls"] = result.raw_tool_calls
    return rec


def _append_line(f, data: bytes) -> None:
    f.write(data)
    f.flush()  # the line is in the OS once written: a killed process loses nothing after this


def _sync(f) -> None:
    f.flush()
    os.fsync(f.fileno())


def _write(path: Path, fn, *args):
    """fn(*args), a write to the traces file: an OSError (a full disk, a quota, an I/O error) becomes a DistillError
    naming the file. What was written before stays: whole lines, which a rerun resumes from (a partial last line
    is cut off by the rerun's repair)."""
    try:
        return fn(*args)
    except OSError as e:
        raise DistillError(f"{path}: cannot write it: {e.strerror or e}") from None


@contextlib.contextmanager
def _locked_append(path: Path):
    """The output file opened for appending, holding an exclusive lock beside it (a second writer is refused)."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(path.parent / f".{path.name}.lock"))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire(timeout=0)
    except Timeout:
        raise DistillError(f"{path}: another `distill generate` is writing this file") from None
    except OSError as e:
        raise DistillError(f"{path}: cannot write it: {e.strerror or e}") from None
    try:
        try:
            f = open(path, "ab")
        except OSError as e:
            raise DistillError(f"{path}: cannot write it: {e.strerror or e}") from None
        with f:
            yield f
    finally:
        lock.release()


async def agenerate(
    tasks_path: str | os.PathLike,
    backend: Backend,
    out_path: str | os.PathLike,
    samples: int = 1,
    *,
    limit: int | None = None,
    progress: bool | None = None,
) -> Summary:
    """The async form of `generate`, for callers already inside an event loop."""
    from eval.tasks import load_tasks

    if samples < 1:
        raise DistillError(f"--samples must be at least 1, got {samples}")
    if limit is not None and limit < 1:
        raise DistillError(f"--limit must be at least 1, got {limit}")
    tasks = list(load_tasks(tasks_path).values())
    if limit is not None:
        tasks = tasks[:limit]
    out = Path(out_path)
    check_out_file(out)
    # Read the whole file before the lock is taken (taking it creates a lock file beside --out), so a file that is
    # not ours is refused with nothing created; under the lock the scan is reused unless the file changed since.
    scanned = (_identity(out), scan_traces(out))
    return await _agenerate(tasks, backend, out, samples, progress, scanned)


def _identity(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


async def _agenerate(tasks: list, backend: Backend, out: Path, samples: int, progress: bool | None,
                     scanned: tuple) -> Summary:
    from tqdm import tqdm

    from eval.parse import parse_output

    start = time.perf_counter()
    with _locked_append(out) as f:
        # Recognise the file before changing a byte of it: only then may a torn last line be cut off.
        identity, (done, settings) = scanned
        if _identity(out) != identity and out.stat().st_size > 0:  # another run wrote to it in between
            done, settings = scan_traces(out)
        dropped = _write(out, repair_tail, out)
        model = backend.model
        ours = json.dumps(backend.sampling.to_dict(), sort_keys=True)
        if settings.get(model, {ours}) != {ours}:
            # The resume key has no sampling settings in it (a rerun must find its own traces), so say when
            # the file already holds this model's traces made with other settings.
            print(
                f"distill generate: warning: {out} holds traces of {model} made with other sampling settings "
                f"({'; '.join(sorted(settings[model] - {ours}))}); they count as done. Use another --out for a "
                f"separate run.",
                file=sys.stderr,
            )
        wanted = [(t, s) for t in tasks for s in range(samples)]
        todo = [
            Request(t.id, s, t.messages, t.tools, derive_seed(backend.sampling.seed, t.id, s))
            for t, s in wanted
            if (t.id, model, s) not in done
        ]
        summary = Summary(str(out), model, total=len(wanted), already=len(wanted) - len(todo), dropped_tail_bytes=dropped)
        bar = tqdm(
            total=len(wanted),
            initial=summary.already,
            unit="trace",
            desc=f"generate {model}",
            disable=(not sys.stderr.isatty()) if progress is None else not progress,
            dynamic_ncols=True,
            mininterval=0.1 if sys.stderr.isatty() else 5.0,  # a log file gets a line every few seconds
        )
        last_sync = time.monotonic()
        results = backend.generate(todo)
        try:
            async for result in results:
                if result.error:
                    summary.failed[result.error] += 1
                    summary.failure_examples.setdefault(result.error, result.error_detail)
                else:
                    parsed = parse_output(result.raw, result.raw_tool_calls)
                    _write(out, _append_line, f, trace_line(trace_record(result, backend, parsed)))
                    summary.written += 1
                    summary.outputs[parsed.status] += 1
                    summary.prompt_tokens += result.prompt_tokens or 0
                    summary.completion_tokens += result.completion_tokens or 0
                    if time.monotonic() - last_sync > FSYNC_EVERY_S:
                        _write(out, os.fsync, f.fileno())
                        last_sync = time.monotonic()
                bar.update(1)
                if summary.failed:
                    bar.set_postfix(failed=sum(summary.failed.values()), refresh=False)
            _write(out, _sync, f)
        except DistillError as e:
            if summary.written:
                raise DistillError(
                    f"{e}; the {summary.written} traces written before it are kept in {out}: rerun the same "
                    f"command to continue"
                ) from None
            raise
        finally:
            await results.aclose()  # cancels in-flight requests when the loop stops early
            bar.close()
            with contextlib.suppress(OSError):  # after a write error: whole lines reached the file, nothing to add
                _sync(f)
    summary.elapsed_s = time.perf_counter() - start
    summary.http_statuses = dict(getattr(backend, "status_counts", {}) or {})
    return summary


def generate(
    tasks_path: str | os.PathLike,
    backend: Backend,
    out_path: str | os.PathLike,
    samples: int = 1,
    *,
    limit: int | None = None,
    progress: bool | None = None,
) -> Summary:
    """Write `samples` traces per task of `tasks_path` to `out_path` (JSONL, appended; resumes a partial file).

    Returns a Summary; requests that failed after their retries are counted in `summary.failed` and not
    written, so calling again finishes them. Raises DistillError for bad input and for a server that is down or
    refuses every request. `progress=None` shows the bar only on a terminal."""
    return asyncio.run(agenerate(tasks_path, backend, out_path, samples, limit=limit, progress=progress))


@dataclass
class BackendConfig:
    """How to reach a model and sample from it: what `distill generate`, `distill eval` and `distill serve` build
    their backend from. Built from the command line by `backend_config_from_args`, or directly in Python."""

    backend: str  # openai | hf | vllm
    model: str  # served model name (openai), or Hub id / local folder / .gguf / pkg:NAME (hf, vllm)
    adapter: str | None = None  # LoRA adapter folder (hf, vllm); openai: recorded only
    temperature: float = 0.7
    top_p: float = 1.0
    max_new_tokens: int = 512
    seed: int | None = None
    prompt_style: str = "hermes"
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"  # name of the environment variable; the key itself is never stored
    tools_in_prompt: bool = False
    concurrency: int = 16
    timeout_s: float = 120.0
    max_retries: int = 5
    batch_size: int | None = None  # hf default 8, vllm default 256
    chat_template: str | None = None  # shipped template name or Jinja file
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False
    vllm_engine_args: str | None = None  # JSON object

    def check(self) -> None:
        """Bad flag values as DistillErrors, before any model loads."""
        if self.backend not in ("openai", "hf", "vllm"):
            raise DistillError(f"--backend: unknown backend {self.backend!r} (openai, hf or vllm)")
        if self.backend == "openai" and not self.base_url:
            raise DistillError("--backend openai needs --base-url (e.g. http://127.0.0.1:8000/v1)")
        if self.chat_template:
            resolve_chat_template(self.chat_template)  # names what is wrong with a bad name or path
        if self.adapter and not Path(self.adapter).is_dir():
            raise DistillError(f"--adapter {self.adapter}: no such adapter folder")
        for flag, value, ok, what in (
            ("--concurrency", self.concurrency, self.concurrency >= 1, "at least 1"),
            ("--timeout", self.timeout_s, self.timeout_s > 0, "positive (seconds)"),
            ("--max-retries", self.max_retries, self.max_retries >= 0, "0 or more"),
            ("--max-new-tokens", self.max_new_tokens, self.max_new_tokens >= 1, "at least 1"),
            ("--temperature", self.temperature, self.temperature >= 0, "0 or more"),
            ("--top-p", self.top_p, 0 < self.top_p <= 1, "in (0, 1]"),
            ("--batch-size", self.batch_size, self.batch_size is None or self.batch_size >= 1, "at least 1"),
        ):
            if not ok:  # silently clamped or sent as is before, where a server answered with a confusing error
                raise DistillError(f"{flag} must be {what}, got {value}")


def backend_config_from_args(args: argparse.Namespace, model: str | None = None) -> BackendConfig:
    """The BackendConfig of the flags `add_backend_arguments` declared (and --backend, --model, --adapter)."""
    return BackendConfig(
        backend=args.backend, model=model or args.model, adapter=getattr(args, "adapter", None),
        temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens, seed=args.seed,
        prompt_style=args.prompt_style, base_url=args.base_url, api_key_env=args.api_key_env,
        tools_in_prompt=args.tools_in_prompt, concurrency=args.concurrency, timeout_s=args.timeout,
        max_retries=args.max_retries, batch_size=args.batch_size, chat_template=args.chat_template,
        device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code,
        vllm_engine_args=args.vllm_engine_args,
    )


def build_backend(config: BackendConfig) -> Backend:
    """The backend a BackendConfig names; each backend's import happens only in its branch."""
    config.check()
    sampling = Sampling(
        temperature=config.temperature, top_p=config.top_p, max_new_tokens=config.max_new_tokens, seed=config.seed
    )
    if config.backend == "openai":
        from data_gen.backends.openai_backend import OpenAIBackend

        return OpenAIBackend(
            config.model,
            base_url=config.base_url,
            sampling=sampling,
            api_key_env=config.api_key_env,
            tools_in_prompt=config.tools_in_prompt,
            prompt_style=config.prompt_style,
            concurrency=config.concurrency,
            timeout_s=config.timeout_s,
            max_retries=config.max_retries,
        )
    elif config.backend == "hf":
        from data_gen.backends.hf_backend import HFBackend

        return HFBackend(
            config.model,
            sampling=sampling,
            batch_size=config.batch_size or 8,
            device=config.device,
            dtype=config.dtype,
            chat_template=config.chat_template,
            prompt_style=config.prompt_style,
            trust_remote_code=config.trust_remote_code,
            adapter=config.adapter,
        )
    else:
        from data_gen.backends.vllm_backend import VLLMBackend

        try:
            engine_args = json.loads(config.vllm_engine_args) if config.vllm_engine_args else {}
        except json.JSONDecodeError as e:
            raise DistillError(f"--vllm-engine-args is not valid JSON: {e.msg}") from None
        if not isinstance(engine_args, dict):
            raise DistillError("--vllm-engine-args must be a JSON object")
        if config.trust_remote_code:
            engine_args.setdefault("trust_remote_code", True)
        return VLLMBackend(
            config.model,
            sampling=sampling,
            batch_size=config.batch_size or 256,
            chat_template=config.chat_template,
            prompt_style=config.prompt_style,
            engine_args=engine_args,
            adapter=config.adapter,
        )


def generate_cli(args: argparse.Namespace) -> int:
    if not Path(args.tasks).is_file():
        raise DistillError(f"{args.tasks}: no such file")
    backend = build_backend(backend_config_from_args(args))
    summary = generate(args.tasks, backend, args.out, args.samples, limit=args.limit, progress=not args.no_progress)
    print(summary.format(), file=sys.stderr)
    return 1 if summary.failed else 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "generate",
        help="sample traces (teacher or student answers) for every task; resumable",
        description="Ask a model to answer every task --samples times and append one trace per answer to --out\n"
        "(JSONL: task_id, model, sample, raw, tool_calls, finish_reason, latency_s, tokens).\n\n"
        "Resumable: rerun the same command after a crash or Ctrl-C; it skips every (task_id, model, sample)\n"
        "already in --out, drops a half-written last line, and finishes the rest. Requests that still fail\n"
        "after their retries are not written: the summary counts them by kind, and the exit status is 1 until\n"
        "a rerun completes them.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""examples:
  # any OpenAI-compatible server (vLLM, SGLang, TGI, llama.cpp, transformers serve, hosted APIs)
  distill generate --tasks tasks.jsonl --backend openai --base-url http://127.0.0.1:8000/v1 \\
      --model Qwen/Qwen2.5-72B-Instruct --samples 8 --concurrency 64 --out traces.jsonl
  # a local transformers model
  distill generate --tasks tasks.jsonl --backend hf --model Qwen/Qwen2.5-0.5B-Instruct --samples 1 \\
      --temperature 0 --out student_traces.jsonl
  # vLLM's offline engine (pip install 'distill[vllm]')
  distill generate --tasks tasks.jsonl --backend vllm --model Qwen/Qwen2.5-72B-Instruct \\
      --vllm-engine-args '{"tensor_parallel_size": 4}' --samples 8 --out traces.jsonl""",
    )
    p.add_argument("--tasks", required=True, help="tasks .jsonl file")
    p.add_argument("--out", required=True, help="traces .jsonl file; appended to, created if missing")
    p.add_argument(
        "--backend",
        choices=["openai", "hf", "vllm"],
        default="openai",
        help="openai: an OpenAI-compatible server at --base-url; hf: a local transformers model; vllm: vLLM's "
        "offline engine (default: %(default)s)",
    )
    p.add_argument(
        "--model",
        required=True,
        help="model name sent to the server (openai) or Hub id / local folder (hf, vllm); written on every trace "
        "and part of the resume key",
    )
    p.add_argument("--samples", type=int, default=1, help="answers per task (default: %(default)s)")
    p.add_argument("--limit", type=int, default=None, help="only the first N tasks of --tasks (a quick trial)")
    add_backend_arguments(p)
    p.set_defaults(run=generate_cli)


def add_backend_arguments(p: argparse.ArgumentParser) -> None:
    """The sampling and backend flags of `distill generate` and `distill eval` (read back by `backend_config_from_args`)."""
    s = p.add_argument_group("sampling")
    s.add_argument(
        "--temperature", type=float, default=0.7, help="sampling temperature; 0 is greedy (default: %(default)s)"
    )
    s.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling probability mass (default: %(default)s)")
    s.add_argument(
        "--max-new-tokens", type=int, default=512, help="most tokens generated per answer (default: %(default)s)"
    )
    s.add_argument(
        "--seed",
        type=int,
        default=None,
        help="base seed; each (task, sample) gets its own seed derived from it, so samples differ and a rerun "
        "reproduces where the backend honours seeds (default: unseeded)",
    )
    s.add_argument(
        "--prompt-style",
        choices=["hermes", "python"],
        default="hermes",
        help="answer format asked for when tools go into the prompt (--tools-in-prompt, or a base model without a "
        "chat template): Hermes <tool_call>{json}</tool_call> blocks or a Python list of calls (default: %(default)s)",
    )
    o = p.add_argument_group("openai backend")
    o.add_argument("--base-url", default=None, help="server URL including /v1, e.g. http://127.0.0.1:8000/v1")
    o.add_argument(
        "--api-key-env",
        default="OPENAI_API_KEY",
        help="environment variable holding the API key; the key is never printed (default: %(default)s; unset "
        "is fine for local servers)",
    )
    o.add_argument(
        "--tools-in-prompt",
        action="store_true",
        help="render the tools into the system message instead of sending the `tools` field, for servers that "
        "reject or ignore it",
    )
    o.add_argument("--concurrency", type=int, default=16, help="requests in flight at once (default: %(default)s)")
    o.add_argument(
        "--timeout", type=float, default=120.0, help="seconds allowed per request attempt (default: %(default)s)"
    )
    o.add_argument(
        "--max-retries",
        type=int,
        default=5,
        help="retries per request on 408/409/429/5xx, timeouts and dropped connections, with exponential backoff "
        "(0.5 s doubling to 8 s, jittered) or the server's Retry-After (default: %(default)s)",
    )
    h = p.add_argument_group("hf and vllm backends")
    h.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="hf: prompts per generate() call (default 8); vllm: tasks per engine call, i.e. how often traces "
        "reach the file (default 256)",
    )
    h.add_argument("--chat-template", default=None, help="chat template replacing the model's own: a shipped one by name "
                   "(hermes_tool, gemma3_tool) or a Jinja file")
    h.add_argument("--device", default="auto", help="hf: cuda, cuda:1, mps, cpu or auto (default: %(default)s)")
    h.add_argument(
        "--dtype",
        choices=["auto", "bfloat16", "float16", "float32"],
        default="auto",
        help="hf: weight dtype; auto keeps the checkpoint's (default: %(default)s)",
    )
    h.add_argument(
        "--trust-remote-code", action="store_true", help="allow model code from the Hub (hf, vllm); off by default"
    )
    h.add_argument(
        "--vllm-engine-args",
        default=None,
        help='vllm: JSON object of vllm.LLM keyword arguments, e.g. \'{"tensor_parallel_size": 4, '
        '"max_model_len": 8192}\'',
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (the summary is still printed)")
