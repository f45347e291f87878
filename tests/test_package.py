"""The package as pip installs it from a wheel, outside the source checkout: the wheel holds the recipes, the chat
templates, the test helpers and py.typed, and the installed package finds them from an empty folder."""

from __future__ import annotations

import subprocess
import sys
import zipfile

from tests.conftest import wheel_env


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
