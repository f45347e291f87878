"""Multi-process launches in tests, with the stacks of a launch that does not exit.

    returncode, output, out = launch_retrying_exit_hang(make_cmd, cwd=ROOT, env=ENV, timeout_s=240)

A hung `accelerate launch` under `subprocess.run(timeout=...)` fails with no clue where it stopped and can leave
its workers running. Here the launch runs in its own process group with PYTHONFAULTHANDLER=1; past the timeout the
group gets SIGABRT, so the launcher and every worker print their Python stacks before they stop. A launch that hung
only after its training wrote a finished run.json (torch's gloo teardown can stall at exit: pytorch/pytorch#75097)
is retried once, with a warning that carries the stacks; any other hang, or a second one, fails the test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import warnings
from collections.abc import Callable
from pathlib import Path

from data_gen.local_models import run_record


def run_with_stacks_on_hang(cmd: list[str], *, cwd: Path, env: dict, timeout_s: float) -> tuple[int, str, bool]:
    """(return code, stdout + stderr, hung) of `cmd` run in its own process group; a hung group is stopped with
    SIGABRT (stacks printed), then SIGKILL if that does not end it within a minute."""
    proc = subprocess.Popen(cmd, cwd=cwd, env={**env, "PYTHONFAULTHANDLER": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout_s)
        return proc.returncode, output, False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGABRT)
        try:
            output, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
        return proc.returncode, output, True


def launch_retrying_exit_hang(make_cmd: Callable[[int], tuple[list[str], Path]], *, cwd: Path, env: dict,
                              timeout_s: float) -> tuple[int, str, Path]:
    """Run the launch `make_cmd(attempt)` returns as (command, its training output folder); returns (return code,
    output, output folder) of the launch that exited. Raises AssertionError with the stacks for a hang that is not
    an exit hang after a finished run, or for a second hang."""
    for attempt in (1, 2):
        cmd, out = make_cmd(attempt)
        returncode, output, hung = run_with_stacks_on_hang(cmd, cwd=cwd, env=env, timeout_s=timeout_s)
        if not hung:
            return returncode, output, out
        if attempt == 2 or (run_record(out) or {}).get("status") != "finished":
            raise AssertionError(f"the launch did not exit within {timeout_s:g} s; its stacks:\n{output[-12000:]}")
        warnings.warn(f"the launch trained, wrote a finished run.json and hung at exit; retrying once. Its stacks:\n"
                      f"{output[-12000:]}", stacklevel=2)
    raise AssertionError("unreachable")
