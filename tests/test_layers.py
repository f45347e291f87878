"""The import arrows the code is held to: CLI -> everything; distill/* -> data_gen, eval; data_gen -> eval;
eval -> nothing of the project and no heavy library. Checked two ways: by importing in a fresh interpreter and
looking at what got loaded, and by reading every module's imports (lazy ones inside functions included)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "datasets", "trl", "peft", "accelerate")


def _loaded_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sorted(sys.modules)))"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    return set(out)


def _top(names: set[str]) -> set[str]:
    return {n.split(".")[0] for n in names}


def test_eval_loads_nothing_heavy_and_nothing_of_the_other_layers():
    loaded = _loaded_after("import eval.verify, eval.report, eval.compare, eval.io, eval.bfcl_data")
    assert not _top(loaded) & set(HEAVY), sorted(_top(loaded) & set(HEAVY))
    assert "distill" not in _top(loaded) and "data_gen" not in _top(loaded)


def test_data_gen_modules_load_no_training_code():
    loaded = _loaded_after("import data_gen.pairs, data_gen.generate, data_gen.bfcl, data_gen.compose, "
                           "data_gen.negatives, data_gen.local_models, data_gen.prompting")
    assert "distill" not in _top(loaded)
    assert not {"torch", "trl", "peft", "accelerate"} & _top(loaded)


def test_reading_a_recipe_and_the_command_line_load_no_torch():
    loaded = _loaded_after("import distill.recipe, distill.fast_dpo.config, distill.cli\n"
                           "from distill.recipe import read_recipe_file, recipes_dir\n"
                           "read_recipe_file(recipes_dir() / 'demo' / 'dpo.yaml')")
    assert "torch" not in loaded and "trl" not in _top(loaded)


def _imports(path: Path) -> set[str]:
    """Every project module a file imports, at module level or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {m for m in found if m.split(".")[0] in ("distill", "data_gen", "eval", "tests", "benchmarks")}


def _allowed(module: str, imported: str) -> bool:
    layer, target = module.split(".")[0], imported.split(".")[0]
    if target in ("tests", "benchmarks"):
        return False  # nothing in the package imports the test suite or benchmark scripts
    if module in ("distill.cli", "distill.__main__"):  # the command line itself
        return True
    if imported == "distill.cli" or imported.startswith("distill.cli."):
        return False  # the command line sits on top: nothing below calls back into it
    if layer == "eval":
        return target == "eval"
    if layer == "data_gen":
        return target in ("data_gen", "eval")
    return True  # distill/* -> distill, data_gen, eval


MODULES = sorted(p for pkg in ("distill", "data_gen", "eval") for p in (ROOT / pkg).rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_import_follows_the_layers(path):
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    wrong = sorted(m for m in _imports(path) if not _allowed(module, m))
    assert not wrong, f"{path.relative_to(ROOT)} imports {wrong} against the layers (see docs/design.md)"


def test_benchmarks_use_the_package_not_the_test_suite():
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        assert not {m for m in _imports(path) if m.split(".")[0] == "tests"}, path.name
