"""distill.testing.processes: a launch that does not exit is stopped with every process's stacks, and only a hang
after a finished run.json is retried."""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import pytest

from distill.testing.processes import launch_retrying_exit_hang, run_with_stacks_on_hang

# a parent and a child, both asleep in a function whose name the stacks must show
SLEEPERS = """
import subprocess, sys, time
def asleep_in_the_child(): time.sleep(600)
def asleep_in_the_parent(): time.sleep(600)
if len(sys.argv) > 1: asleep_in_the_child()
subprocess.Popen([sys.executable, __file__, "child"])
asleep_in_the_parent()
"""


def test_a_hung_process_group_prints_every_process_stacks(tmp_path):
    script = tmp_path / "sleepers.py"
    script.write_text(SLEEPERS)
    returncode, output, hung = run_with_stacks_on_hang([sys.executable, str(script)], cwd=tmp_path,
                                                       env=dict(os.environ), timeout_s=3)
    assert hung and returncode != 0
    assert "asleep_in_the_parent" in output and "asleep_in_the_child" in output


def _hanging_launch(tmp_path: Path, finished: bool):
    calls = []

    def command(attempt: int) -> tuple[list[str], Path]:
        out = tmp_path / f"run-{attempt}"
        out.mkdir()
        calls.append(attempt)
        if attempt == 1:  # the first launch writes its run.json, then hangs
            (out / "run.json").write_text(json.dumps({"status": "finished" if finished else "running"}))
            return [sys.executable, "-c", "import time; time.sleep(600)"], out
        return [sys.executable, "-c", "print('trained')"], out

    return command, calls


def test_a_hang_after_a_finished_run_is_retried_once_with_a_warning(tmp_path):
    command, calls = _hanging_launch(tmp_path, finished=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        returncode, output, out = launch_retrying_exit_hang(command, cwd=tmp_path, env=dict(os.environ), timeout_s=2)
    assert calls == [1, 2] and returncode == 0 and "trained" in output and out == tmp_path / "run-2"
    assert any("hung at exit" in str(w.message) for w in caught)


def test_a_hang_before_the_run_finished_fails(tmp_path):
    command, calls = _hanging_launch(tmp_path, finished=False)
    with pytest.raises(AssertionError, match="did not exit within 2 s"):
        launch_retrying_exit_hang(command, cwd=tmp_path, env=dict(os.environ), timeout_s=2)
    assert calls == [1]
