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
    """Yield (line number, object) for each non-blank line. Anything else is a DistillError naming the file and
    line: a missing, unreadable or folder path, bytes that are not UTF-8, a line that is not a JSON object
    (numbers past Python's 4,300-digit limit and nesting past its recursion limit included). A last line without
    its newline that does not parse is what a killed (or still running) writer leaves: an error that says so, or
    skipped with skip_torn_tail."""
    path = Path(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DistillError(f"{path}: {_read_problem(e)}") from None
    with f:
        i = 0
        try:
            # Streamed line by line (binary: a line that is not UTF-8 is named rather than failing the whole read).
            for i, raw in enumerate(f, start=1):
                torn = not raw.endswith(b"\n")  # only the last line can lack its newline
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DistillError(
                        f"{path}:{i}: not UTF-8 text (bad byte at column {e.start + 1}); is this a JSONL file?"
                    ) from None
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    if torn and skip_torn_tail:
                        return
                    if torn:
                        raise DistillError(
                            f"{path}:{i}: the last line is cut off (no newline at its end and not valid JSON): a "
                            f"writer was killed or is still writing this file"
                        ) from None
                    raise DistillError(f"{path}:{i}: not valid JSON ({e.msg} at column {e.colno})") from None
                except ValueError as e:  # json's int() of a number longer than sys.get_int_max_str_digits()
                    raise DistillError(f"{path}:{i}: a value JSON decoding refuses ({str(e)[:120]})") from None
                except RecursionError:
                    raise DistillError(f"{path}:{i}: nested too deeply to read") from None
                if not isinstance(obj, dict):
                    raise DistillError(f"{path}:{i}: expected a JSON object, got {type(obj).__name__}")
                yield i, obj
        except OSError as e:  # e.g. an I/O error in the middle of the file
            raise DistillError(f"{path}:{i + 1}: {_read_problem(e)}") from None


def _read_problem(e: OSError) -> str:
    if isinstance(e, FileNotFoundError):
        return "no such file"
    if isinstance(e, IsADirectoryError):
        return "is a folder, not a file"
    return f"cannot read it ({e.strerror or e})"


def _write_problem(path: Path, e: OSError) -> DistillError:
    """An OSError met while writing `path` (disk full, permission denied, a file where a folder must be) as the
    DistillError the CLI prints."""
    if isinstance(e, (FileExistsError, NotADirectoryError)) and e.filename and ".tmp" not in str(e.filename):
        return DistillError(f"{path}: cannot create its folder: {e.filename} is in the way (a file, not a folder)")
    return DistillError(f"{path}: cannot write it: {e.strerror or e}")


def _check_writable_file_path(path: Path) -> None:
    if path.is_dir():
        raise DistillError(f"{path}: is a folder; a file path is expected here")
    if path.exists() and not path.is_file():  # a device or a pipe: a rename would replace it, not write into it
        raise DistillError(f"{path}: exists and is not a regular file")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator:
    """Write to a temporary file beside `path` and rename it into place on success, so a reader never sees
    a half-written file and a failure leaves the old file (or none) behind."""
    path = Path(path)
    _check_writable_file_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _write_problem(path, e) from None
    # mkstemp creates the file 0600; an output file gets what open() would give it (0644 under umask 022).
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError):  # a full disk, a quota, an I/O error: the old file (or none) is left
            raise _write_problem(path, e) from None
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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        restore_interrupted_swap(path)
        if path.exists() and not overwrite:
            raise DistillError(f"{path}: already exists (pass --overwrite to replace it)")
        if path.exists() and not path.is_dir():
            raise DistillError(f"{path}: exists and is not a folder")
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as e:
        raise _write_problem(path, e) from None
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700
    try:
        yield tmp
        old = _backup_of(path)
        if path.exists():
            os.rename(path, old)
        os.rename(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):  # the folder was being filled: nothing of it is left, the old one stays
            raise _write_problem(path, e) from None
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
