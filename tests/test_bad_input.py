"""Bad input through the real command line: every case ends with exit status 2 and a clear message naming the file,
line or key at fault, never a Python traceback, and leaves nothing half-written.

Most cases call `distill.cli.main([...])` in-process (an exception that escapes it fails the test with its
traceback); a few run `python -m distill` as a subprocess and grep its stderr for "Traceback". Disk-full and
permission-denied are simulated in-process (the suite may run as root, which ignores file modes): the write raises
OSError(ENOSPC) / PermissionError exactly where a real disk or directory would. "Nothing half-written": the test's
working folder is byte-identical after a failed command (apart from what the case itself allows).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distill.cli import main

ROOT = Path(__file__).resolve().parents[1]
DEAD_URL = "http://127.0.0.1:9/v1"  # nothing listens on port 9: a command that got as far as asking would fail there

TOOL = {"type": "function", "function": {"name": "search", "description": "Search.", "parameters": {
    "type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}}


def task(i: int) -> dict:
    return {"id": f"t{i}", "category": "simple", "messages": [{"role": "user", "content": f"question {i}"}],
            "tools": [TOOL], "expected": [{"name": "search", "arguments": {"query": [f"question {i}"]}}]}


def trace(i: int, **fields) -> dict:
    call = {"name": "search", "arguments": {"query": f"question {i}" if i % 2 == 0 else "wrong"}}
    return {"task_id": f"t{i}", "model": "m", "sample": 0, "raw": json.dumps(call), "tool_calls": [call],
            "finish_reason": "stop", "latency_s": 0.1, "prompt_tokens": 10, "completion_tokens": 5, **fields}


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def w(tmp_path, monkeypatch) -> Path:
    """A working folder with tasks.jsonl (4 tasks), traces.jsonl (one model, 4 traces), garbage.bin, a folder."""
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "tasks.jsonl", [task(i) for i in range(4)])
    write_jsonl(tmp_path / "traces.jsonl", [trace(i) for i in range(4)])
    (tmp_path / "garbage.bin").write_bytes(bytes(range(256)) * 8 + b"\xff\xfe\x00garbage")
    (tmp_path / "adir").mkdir()
    write_jsonl(tmp_path / "xlam.jsonl", [{"query": "find cats", "tools": [TOOL["function"]],
                                           "answers": [{"name": "search", "arguments": {"query": "cats"}}]}])
    return tmp_path


def snapshot(root: Path) -> dict[str, bytes | int | None]:
    """Every file (its bytes; its size when it cannot be read) and folder (None) under root."""

    def content(p: Path):
        if not p.is_file():
            return None
        try:
            return p.read_bytes()
        except PermissionError:
            return p.stat().st_size

    return {str(p.relative_to(root)): content(p) for p in sorted(root.rglob("*"))}


def fails_cleanly(root: Path, capsys, argv: list[str], *names: str) -> str:
    """Run the CLI; assert exit 2, a message naming each of `names`, and that nothing under root changed.
    Returns the message."""
    before = snapshot(root)
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, f"exit {rc}, stderr:\n{err}"
    assert "Traceback" not in err
    for name in names:
        assert name in err, f"{name!r} not named in:\n{err}"
    assert snapshot(root) == before, "a failed command changed files"
    return err


GENERATE = ["generate", "--backend", "openai", "--base-url", DEAD_URL, "--model", "m", "--no-progress"]


# ---- binary garbage as input ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "argv",
    [
        ["score", "--tasks", "garbage.bin", "--traces", "traces.jsonl", "--out", "o", "--no-plots"],
        ["score", "--tasks", "tasks.jsonl", "--traces", "garbage.bin", "--out", "o", "--no-plots"],
        ["pairs", "--tasks", "tasks.jsonl", "--traces", "garbage.bin", "--out", "o"],
        ["pairs", "--tasks", "garbage.bin", "--traces", "traces.jsonl", "--out", "o"],
        [*GENERATE, "--tasks", "garbage.bin", "--out", "new.jsonl"],
        ["compose", "--tasks", "garbage.bin", "--out", "c.jsonl"],
        ["import", "jsonl", "garbage.bin", "--out", "i.jsonl"],
    ],
    ids=["score-tasks", "score-traces", "pairs-traces", "pairs-tasks", "generate-tasks", "compose", "import-jsonl"],
)
def test_binary_garbage(w, capsys, argv):
    err = fails_cleanly(w, capsys, argv, "garbage.bin")
    assert "garbage.bin:1" in err  # the line at fault


@pytest.mark.parametrize(
    "argv",
    [
        ["fleet", "eval", "--fleet", "garbage.bin", "--tasks", "tasks.jsonl", "--out", "o"],
        ["fleet", "serve", "--fleet", "garbage.bin", "--port", "9"],
        ["fleet", "fit", "--fleet", "garbage.bin", "--tasks", "tasks.jsonl", "--out", "o"],
        ["train", "garbage.bin"],
        ["compare", "garbage.bin", "garbage.bin", "--out", "o"],
    ],
    ids=["fleet-eval", "fleet-serve", "fleet-fit", "train-recipe", "compare"],
)
def test_binary_garbage_as_yaml_or_json(w, capsys, argv):
    fails_cleanly(w, capsys, argv, "garbage.bin")


@pytest.mark.parametrize(
    "row, key",
    [
        ({"query": "q", "tools": [{"name": "f", "parameters": "x"}], "answers": []}, "parameters"),
        ({"query": "q", "tools": ["f"], "answers": []}, "tool"),
        ({"query": "q", "tools": [TOOL["function"]], "answers": [{"name": "search", "arguments": "{not json"}]},
         "answers[0].arguments"),
        ({"query": "q", "tools": [TOOL["function"]], "answers": [{"name": "search", "arguments": [1]}]},
         "answers[0].arguments"),
    ],
    ids=["parameters-str", "tool-str", "arguments-not-json", "arguments-list"],
)
def test_import_jsonl_wrong_types(w, capsys, row, key):
    write_jsonl(w / "rows.jsonl", [row])
    fails_cleanly(w, capsys, ["import", "jsonl", "rows.jsonl", "--out", "t.jsonl"], "rows.jsonl:1", key)


@pytest.mark.parametrize("flag, value", [("--concurrency", "0"), ("--timeout", "-1"), ("--max-retries", "-1"),
                                         ("--top-p", "0"), ("--temperature", "-0.5"), ("--max-new-tokens", "0")])
def test_generate_flag_out_of_range(w, capsys, flag, value):
    fails_cleanly(w, capsys, [*GENERATE, "--tasks", "tasks.jsonl", flag, value, "--out", "g.jsonl"], flag)


def test_generate_out_garbage_is_not_touched(w, capsys):
    err = fails_cleanly(w, capsys, [*GENERATE, "--tasks", "tasks.jsonl", "--out", "garbage.bin"], "garbage.bin")
    assert "not a traces file" in err


# ---- numbers and nesting that json cannot read ----------------------------------------------------------------

@pytest.mark.parametrize(
    "extra, what",
    [(", \"x\": " + "9" * 5000, "digits"), (", \"x\": " + "[" * 3000 + "]" * 3000, "deep")],
    ids=["5000-digit-number", "3000-deep"],
)
def test_task_file_json_limits(w, capsys, extra, what):
    line = json.dumps(task(0))[:-1] + extra + "}\n"
    (w / "odd.jsonl").write_text(json.dumps(task(1)) + "\n" + line, encoding="utf-8")
    err = fails_cleanly(w, capsys, ["score", "--tasks", "odd.jsonl", "--traces", "traces.jsonl", "--out", "o",
                                    "--no-plots"], "odd.jsonl:2")
    assert what in err


# ---- trace fields of the wrong type ----------------------------------------------------------------------------

WRONG_FIELDS = [
    ({"task_id": ["t0"]}, "task_id"),
    ({"model": {"name": "m"}}, "model"),
    ({"sample": [0]}, "sample"),
    ({"sample": "zero"}, "sample"),
    ({"completion_tokens": "12"}, "completion_tokens"),
    ({"prompt_tokens": "12"}, "prompt_tokens"),
    ({"latency_s": "0.5"}, "latency_s"),
    ({"finish_reason": 3}, "finish_reason"),
]


@pytest.mark.parametrize("command", ["score", "pairs"])
@pytest.mark.parametrize("fields, key", WRONG_FIELDS, ids=[k + "-" + type(next(iter(f.values()))).__name__
                                                             for f, k in WRONG_FIELDS])
def test_trace_field_of_wrong_type(w, capsys, command, fields, key):
    write_jsonl(w / "bad.jsonl", [trace(0), trace(1, **fields)])
    argv = [command, "--tasks", "tasks.jsonl", "--traces", "bad.jsonl", "--out", "o"]
    fails_cleanly(w, capsys, argv + (["--no-plots"] if command == "score" else []), "bad.jsonl:2", key)


@pytest.mark.parametrize("fields, key", [({"task_id": ["t0"]}, "task_id"), ({"model": {"name": "m"}}, "model"),
                                         ({"sample": [0]}, "sample")])
def test_generate_resume_file_with_wrong_types(w, capsys, fields, key):
    write_jsonl(w / "resume.jsonl", [trace(0), trace(1, **fields)])
    fails_cleanly(w, capsys, [*GENERATE, "--tasks", "tasks.jsonl", "--out", "resume.jsonl"], "resume.jsonl:2", key)


# ---- folders where files are expected, and files where folders are ---------------------------------------------

@pytest.mark.parametrize(
    "argv, name",
    [
        ([*GENERATE, "--tasks", "tasks.jsonl", "--out", "adir"], "adir"),
        (["import", "bfcl", "--categories", "simple_python", "--limit", "2", "--out", "adir"], "adir"),
        (["import", "jsonl", "xlam.jsonl", "--out", "adir"], "adir"),
        (["compose", "--tasks", "tasks.jsonl", "--out", "adir"], "adir"),
        (["import", "bfcl", "--categories", "simple_python", "--limit", "2", "--out", "tasks.jsonl/x.jsonl"],
         "tasks.jsonl"),
        ([*GENERATE, "--tasks", "tasks.jsonl", "--out", "tasks.jsonl/x.jsonl"], "tasks.jsonl"),
        (["score", "--tasks", "tasks.jsonl", "--traces", "traces.jsonl", "--out", "tasks.jsonl", "--no-plots"],
         "tasks.jsonl"),
        (["score", "--tasks", "tasks.jsonl", "--traces", "traces.jsonl", "--out", "tasks.jsonl/sub", "--no-plots"],
         "tasks.jsonl"),
        (["pairs", "--tasks", "tasks.jsonl", "--traces", "traces.jsonl", "--out", "tasks.jsonl"], "tasks.jsonl"),
        (["score", "--tasks", "adir", "--traces", "traces.jsonl", "--out", "o", "--no-plots"], "adir"),
        (["score", "--tasks", "tasks.jsonl", "--traces", "adir", "--out", "o", "--no-plots"], "adir"),
        ([*GENERATE, "--tasks", "adir", "--out", "new.jsonl"], "adir"),
        (["pairs", "--tasks", "tasks.jsonl", "--traces", "adir", "--out", "o"], "adir"),
    ],
    ids=["generate-out-dir", "import-bfcl-out-dir", "import-jsonl-out-dir", "compose-out-dir",
         "import-out-under-file", "generate-out-under-file", "score-out-file", "score-out-under-file",
         "pairs-out-file", "score-tasks-dir", "score-traces-dir", "generate-tasks-dir", "pairs-traces-dir"],
)
def test_wrong_kind_of_path(w, capsys, argv, name):
    fails_cleanly(w, capsys, argv, name)


# ---- permission denied and a full disk (simulated where the write happens) ------------------------------------

def _fail_writes(monkeypatch, exc: OSError, after: int = 0) -> None:
    """Make every os.fsync after the first `after` raise `exc`: each of distill's writes (atomic files, the traces
    being appended) syncs before it counts as written, which is where a full disk reports itself."""
    calls = {"n": 0}
    real = os.fsync

    def fsync(fd):
        calls["n"] += 1
        if calls["n"] > after:
            raise exc
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize(
    "argv, name",
    [
        (["score", "--tasks", "tasks.jsonl", "--traces", "traces.jsonl", "--out", "o", "--no-plots"], "o"),
        (["import", "bfcl", "--categories", "simple_python", "--limit", "2", "--out", "t.jsonl"], "t.jsonl"),
        (["compose", "--tasks", "tasks.jsonl", "--out", "c.jsonl"], "c.jsonl"),
        (["pairs", "--tasks", "tasks.jsonl", "--traces", "traces.jsonl", "--synthetic", "2", "--out", "p"], "p"),
    ],
    ids=["score", "import-bfcl", "compose", "pairs"],
)
def test_disk_full(w, capsys, monkeypatch, argv, name):
    _fail_writes(monkeypatch, ENOSPC)
    err = fails_cleanly(w, capsys, argv, name)
    assert "No space left on device" in err


def test_disk_full_on_second_model_leaves_no_report(w, capsys, monkeypatch):
    # Two models in one traces file: `score` writes one folder per model; the disk fills up on the second.
    write_jsonl(w / "two.jsonl", [trace(i) for i in range(4)] + [trace(i, model="m2") for i in range(4)])
    _fail_writes(monkeypatch, ENOSPC, after=3)  # the first model's three files get written, then the disk is full
    fails_cleanly(w, capsys, ["score", "--tasks", "tasks.jsonl", "--traces", "two.jsonl", "--out", "o", "--no-plots"],
                  "No space left on device")


def test_disk_full_while_generating(w, capsys, monkeypatch):
    from distill.testing.openai_stub import StubServer

    _fail_writes(monkeypatch, ENOSPC)
    with StubServer() as stub:
        rc = main(["generate", "--backend", "openai", "--base-url", stub.base_url, "--model", "m", "--no-progress",
                   "--tasks", "tasks.jsonl", "--out", "g.jsonl"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "g.jsonl" in err and "No space left on device" in err
    # what reached the file is whole lines (the resume key of each), so a rerun continues from it
    lines = (w / "g.jsonl").read_bytes().splitlines(keepends=True)
    assert all(line.endswith(b"\n") and json.loads(line)["task_id"] for line in lines)


@pytest.mark.parametrize(
    "argv, name",
    [
        (["score", "--tasks", "tasks.jsonl", "--traces", "traces.jsonl", "--out", "o", "--no-plots"], "o"),
        (["import", "bfcl", "--categories", "simple_python", "--limit", "2", "--out", "t.jsonl"], "t.jsonl"),
    ],
    ids=["score", "import-bfcl"],
)
def test_permission_denied_simulated(w, capsys, monkeypatch, argv, name):
    import tempfile

    def denied(*args, dir=None, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    monkeypatch.setattr(tempfile, "mkdtemp", denied)
    err = fails_cleanly(w, capsys, argv, name)
    assert "Permission denied" in err


def _file_modes_enforced() -> bool:
    """False for root with CAP_DAC_OVERRIDE (and on systems without POSIX modes): chmod cannot deny it anything."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        probe = Path(d) / "probe"
        probe.write_text("x")
        probe.chmod(0)
        try:
            probe.read_text()
        except PermissionError:
            return True
        return False


@pytest.mark.skipif(not _file_modes_enforced(), reason="file modes do not stop this user (root)")
@pytest.mark.parametrize(
    "argv, name",
    [
        (["score", "--tasks", "tasks.jsonl", "--traces", "traces.jsonl", "--out", "ro/o", "--no-plots"], "ro"),
        ([*GENERATE, "--tasks", "tasks.jsonl", "--out", "ro/g.jsonl"], "ro"),
        (["import", "bfcl", "--categories", "simple_python", "--limit", "2", "--out", "ro/t.jsonl"], "ro"),
        (["score", "--tasks", "secret.jsonl", "--traces", "traces.jsonl", "--out", "o", "--no-plots"], "secret.jsonl"),
    ],
    ids=["score-out", "generate-out", "import-out", "score-tasks-unreadable"],
)
def test_permission_denied_real(w, capsys, argv, name):
    (w / "ro").mkdir()
    (w / "secret.jsonl").write_text((w / "tasks.jsonl").read_text())
    os.chmod(w / "ro", 0o555)
    os.chmod(w / "secret.jsonl", 0)
    try:
        err = fails_cleanly(w, capsys, argv, name)
        assert "Permission denied" in err
    finally:
        os.chmod(w / "ro", 0o755)
        os.chmod(w / "secret.jsonl", 0o644)


# ---- a torn last line, limits ---------------------------------------------------------------------------------

def test_score_reports_a_torn_last_line(w, capsys):
    text = "".join(json.dumps(trace(i)) + "\n" for i in range(3)) + json.dumps(trace(3))[:-7]
    (w / "torn.jsonl").write_text(text, encoding="utf-8")
    err = fails_cleanly(w, capsys, ["score", "--tasks", "tasks.jsonl", "--traces", "torn.jsonl", "--out", "o",
                                    "--no-plots"], "torn.jsonl:4")
    assert "cut off" in err


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["import", "bfcl", "--categories", "simple_python", "--limit", "-1", "--out", "t.jsonl"], "--limit"),
        (["import", "bfcl", "--categories", "simple_python", "--limit", "0", "--out", "t.jsonl"], "--limit"),
        ([*GENERATE, "--tasks", "tasks.jsonl", "--limit", "-1", "--out", "g.jsonl"], "--limit"),
        ([*GENERATE, "--tasks", "tasks.jsonl", "--limit", "0", "--out", "g.jsonl"], "--limit"),
        ([*GENERATE, "--tasks", "tasks.jsonl", "--samples", "0", "--out", "g.jsonl"], "--samples"),
    ],
    ids=["import-limit-neg", "import-limit-zero", "generate-limit-neg", "generate-limit-zero", "generate-samples-zero"],
)
def test_limits_are_positive(w, capsys, argv, flag):
    before = snapshot(w)
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse refused the value itself: usage line and exit 2
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and flag in err and "Traceback" not in err, err
    assert snapshot(w) == before


# ---- through a real process: stderr has no traceback ------------------------------------------------------------

def run_distill(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "distill", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def test_generate_never_touches_a_file_it_does_not_recognise(w):
    # the issue's own reproduction: `printf 'a\nb' > f` then generate --out f
    (w / "f").write_bytes(b"a\nb")
    p = run_distill(*GENERATE, "--tasks", "tasks.jsonl", "--out", "f", cwd=w)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and "f:1" in p.stderr and "not a traces file" in p.stderr
    assert (w / "f").read_bytes() == b"a\nb"


def test_garbage_tasks_in_a_real_process(w):
    p = run_distill("score", "--tasks", "garbage.bin", "--traces", "traces.jsonl", "--out", "o", cwd=w)
    assert p.returncode == 2 and "Traceback" not in p.stderr and "garbage.bin:1" in p.stderr, p.stderr
    assert not (w / "o").exists()
