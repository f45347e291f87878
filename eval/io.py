"""The pieces every layer shares: the error type for bad input, JSONL reading with line numbers, atomic file and
folder writes, and percentiles. Pure standard library, so any module of distill may import it.

    for lineno, record in read_jsonl("tasks.jsonl"): ...
    with atomic_write("report.json") as f: f.write(...)
    with atomic_folder("pairs/") as tmp: (tmp / "train.jsonl").write_text(...)   # swapped in on success
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
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
    # mkstemp creates the file 0600; an output file gets what open() would give it (0644 under umask 022).
    os.chmod(tmp, 0o666 & ~_umask())
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


def _umask() -> int:
    mask = os.umask(0)  # the only way to read the umask is to set it; restored at once
    os.umask(mask)
    return mask


def _backup_of(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def restore_interrupted_swap(path: str | os.PathLike) -> None:
    """If a swap by `atomic_folder` was killed between its two renames, `path` is missing and its backup holds
    the previous folder: put it back. Called before every swap and by readers that want the last good folder."""
    path = Path(path)
    old = _backup_of(path)
    if old.is_dir() and not path.exists():
        os.rename(old, path)
    elif old.is_dir():
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Build a folder in a temporary sibling and swap it in for `path` when the block succeeds.

    The previous folder is renamed aside and only deleted once the new one is in place, so a kill at any moment
    leaves either the old folder or the new one (after an interrupted swap, the old one under a hidden backup
    name that the next swap or `restore_interrupted_swap` puts back). On failure the temporary folder goes and
    `path` is untouched. POSIX has no atomic exchange of two non-empty folders (Linux's renameat2 is not in the
    standard library), hence the backup rename. With overwrite=False an existing `path` is a DistillError."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    restore_interrupted_swap(path)
    if path.exists() and not overwrite:
        raise DistillError(f"{path}: already exists (pass --overwrite to replace it)")
    if path.exists() and not path.is_dir():
        raise DistillError(f"{path}: exists and is not a folder")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700
    try:
        yield tmp
        old = _backup_of(path)
        if path.exists():
            os.rename(path, old)
        os.rename(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def percentile(values, q: float) -> float | None:
    """The q-quantile (q in [0, 1]) with linear interpolation between closest ranks, numpy's default; None for
    no values. By hand because `statistics.quantiles` refuses a single value before Python 3.13."""
    xs = sorted(values)
    if not xs:
        return None
    pos = (len(xs) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def fill_paragraphs(text: str, width: int = 100) -> str:
    """A command's description with each blank-line-separated paragraph filled to `width`, for parsers using
    argparse.RawDescriptionHelpFormatter (which keeps their epilog's example lines as written)."""
    import textwrap

    return "\n\n".join(textwrap.fill(p, width, break_on_hyphens=False) for p in text.split("\n\n"))
