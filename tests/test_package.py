"""The package as pip installs it from a wheel, outside the source checkout: the wheel holds the recipes, the chat
templates, the test helpers and py.typed, and the installed package finds them from an empty folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def installed_wheel(tmp_path_factory) -> Path:
    """The project built into a wheel and installed (not editable, no dependencies: the test venv has them) into
    a folder of its own; PYTHONPATH=<that folder> makes it the `distill` a child process imports."""
    work = tmp_path_factory.mktemp("wheel")
    # Built from a copy: setuptools builds inside the source tree (build/), which must stay clean, and a stale
    # build/ folder would leak old files into the wheel.
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "runs", "checkpoints", "*.egg-info", "__pycache__", ".pytest_cache",
        ".hypothesis", ".whl", ".site"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(work / "dist"), str(source)], check=True, capture_output=True, cwd=work)
    (wheel,) = (work / "dist").glob("distill-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target",
                    str(work / "site"), str(wheel)], check=True, capture_output=True, cwd=work)
    return wheel


def wheel_env(wheel: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(wheel.parent.parent / "site"), "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1"}


def test_wheel_holds_recipes_templates_and_types(installed_wheel):
    names = set(zipfile.ZipFile(installed_wheel).namelist())
    for needed in ("distill/recipes/demo/sft.yaml", "distill/recipes/demo/dpo.yaml", "distill/recipes/README.md",
                   "distill/recipes/accelerate/multi_gpu.yaml", "distill/recipes/debug/tiny/model/config.json",
                   "data_gen/templates/hermes_tool.jinja", "data_gen/templates/gemma3_tool.jinja",
                   "distill/testing/tiny_model.py", "distill/py.typed", "data_gen/py.typed", "eval/py.typed"):
        assert needed in names, needed
    assert not [n for n in names if n.startswith("tests/") or "/cache-" in n]


def test_installed_package_finds_its_recipes_from_an_empty_folder(installed_wheel, tmp_path):
    code = ("import distill, data_gen.prompting as p; from distill.recipe import recipes_dir, parse_recipe; "
            "print(distill.__file__); print(recipes_dir()); "
            "print(parse_recipe([str(recipes_dir() / 'demo' / 'dpo.yaml')]).script.stage); "
            "print(len(p.resolve_chat_template('hermes_tool')[0]) > 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=wheel_env(installed_wheel),
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    module, recipes, stage, template = r.stdout.split()
    site = str(installed_wheel.parent.parent / "site")
    assert module.startswith(site) and recipes.startswith(site), (module, recipes)
    assert stage == "dpo" and template == "True"
    help_text = subprocess.run([sys.executable, "-m", "distill", "--help"], cwd=tmp_path, env=wheel_env(installed_wheel),
                               capture_output=True, text=True, check=True).stdout
    assert "demo" in help_text and "env" in help_text
