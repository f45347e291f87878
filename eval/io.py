"""JSONL reading with line numbers, atomic writes, and the error type for bad input.

    for lineno, record in read_jsonl("tasks.jsonl"): ...
    with atomic_write("report.json") as f: f.write(...)
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


class DistillError(Exception):
    """Bad input or configuration; the message names the file, line or key at fault. The CLI prints it and
    exits with status 2."""


def read_jsonl(path: str | os.PathLike, *, skip_torn_tail: bool = False) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line; a line that is not a JSON object is a
    DistillError naming file and line. With skip_torn_tail, a last line without its newline that does not
    parse (what a killed writer leaves) is skipped instead."""
    path = Path(path)
    try:
        f = open(path, encoding="utf-8")
    except FileNotFoundError:
        raise DistillError(f"{path}: no such file") from None
    with f:
        lines = f.readlines()
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            if skip_torn_tail and i == len(lines) and not line.endswith("\n"):
                return
            raise DistillError(f"{path}:{i}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise DistillError(f"{path}:{i}: expected a JSON object, got {type(obj).__name__}")
        yield i, obj


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator:
    """Write to a temporary file beside `path` and rename it into place on success, so a reader never sees
    a half-written file and a failure leaves the old file (or none) behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_jsonl(path: str | os.PathLike, records) -> int:
    """Write records as JSONL atomically; return how many were written."""
    n = 0
    with atomic_write(path) as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
    return n


def write_json(path: str | os.PathLike, obj) -> None:
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")
