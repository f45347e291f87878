"""Fast DPO's dependence on TRL internals goes through distill/fast_dpo/trl_compat.py only, the installed TRL
has every internal listed there, and a TRL without one of them is refused with its name."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from distill.fast_dpo import trl_compat
from eval.io import DistillError

ROOT = Path(__file__).resolve().parents[1]
# Code that runs fast DPO against TRL: the package and its benchmark
SOURCES = sorted((ROOT / "distill" / "fast_dpo").glob("*.py")) + [ROOT / "benchmarks" / "dpo_speed.py"]
PUBLIC_TRL = {"DPOConfig", "DPOTrainer"}  # what fast DPO may import from `trl` directly


def test_installed_trl_has_every_internal_fast_dpo_uses():
    missing = trl_compat.missing_in_trl()
    assert not missing, (
        "TRL changed internals fast DPO relies on; adapt distill/fast_dpo/trl_compat.py: " + "; ".join(missing)
    )
    trl_compat.check_trl()


def test_a_constructed_dpo_trainer_has_the_attributes_fast_dpo_reads(tiny_model_dir, tmp_path):
    from datasets import Dataset
    from transformers import AutoTokenizer

    from tests.test_fast_dpo import load_model, tool_preference_rows, trl_trainer

    trainer = trl_trainer(load_model(tiny_model_dir), Dataset.from_list(tool_preference_rows(4)),
                          AutoTokenizer.from_pretrained(tiny_model_dir), tmp_path)
    missing = trl_compat.missing_on_trainer(trainer)
    assert not missing, "DPOTrainer no longer sets: " + "; ".join(missing)
    # the accessors read what DPOTrainer keeps: its metrics store and its token count, which fast DPO adds to
    assert trl_compat.metrics(trainer, "train") is trainer._metrics["train"]
    assert trl_compat.add_train_tokens(trainer, 10) == 10 == trl_compat.train_tokens(trainer)
    assert trl_compat.is_vision_dataset(trainer) is False and trl_compat.uses_aux_loss(trainer) is False


@pytest.mark.parametrize(
    "remove, named",
    [
        (("trl.trainer.utils", "use_adapter"), "trl.trainer.utils.use_adapter"),
        (("trl.models.utils", "disable_gradient_checkpointing"), "trl.models.utils.disable_gradient_checkpointing"),
        (("trl.trainer.utils", "add_fused_lm_head"), "trl.trainer.utils.add_fused_lm_head"),
        (("trl.trainer.utils", "FusedCausalLMOutput"), "trl.trainer.utils.FusedCausalLMOutput"),
        (("trl.DPOTrainer", "_precompute_ref_logps"), "trl.DPOTrainer._precompute_ref_logps"),
        (("trl.DPOTrainer", "compute_loss"), "trl.DPOTrainer.compute_loss"),
    ],
)
def test_a_trl_without_an_internal_is_refused_by_its_name(monkeypatch, remove, named):
    import importlib

    import trl

    where, name = remove
    target = trl.DPOTrainer if where == "trl.DPOTrainer" else importlib.import_module(where)
    # DPOTrainer inherits compute_loss from transformers' Trainer: hide it on the class itself
    monkeypatch.setattr(target, name, None, raising=False) if where == "trl.DPOTrainer" else monkeypatch.delattr(
        target, name)
    with pytest.raises(DistillError, match=r"trl \S+ does not have: .*" + named.replace(".", r"\.")) as err:
        trl_compat.check_trl()
    assert "fast: false" in str(err.value)  # and says what to do


def test_a_renamed_fused_output_field_and_a_missing_trainer_attribute_are_named(monkeypatch):
    import trl.trainer.utils as utils

    @dataclasses.dataclass
    class Output:  # TRL's output without is_top1
        log_probs: object = None
        entropy: object = None

    monkeypatch.setattr(utils, "FusedCausalLMOutput", Output)
    with pytest.raises(DistillError, match=r"FusedCausalLMOutput\.is_top1"):
        trl_compat.check_trl()

    class Trainer:
        _is_vision_dataset = aux_loss_enabled = False
        _total_train_tokens = _tp_size = _train_batch_size = 0

    with pytest.raises(DistillError, match=r"DPOTrainer\._metrics \(set by its constructor\)"):
        trl_compat.check_trainer(Trainer())


def test_a_wrapper_whose_trl_function_is_gone_names_it(monkeypatch):
    monkeypatch.delattr("trl.trainer.utils.use_adapter")
    with pytest.raises(DistillError, match=r"trl\.trainer\.utils\.use_adapter"):
        trl_compat.use_adapter(object(), None)


def _trl_internals_used(path: Path) -> list[str]:
    """TRL internals a file reaches without trl_compat: imports from trl submodules or of non-public names, and
    the attributes and methods trl_compat lists, read, set or defined anywhere but on trl_compat itself."""
    private = {a for a in trl_compat.TRAINER_ATTRIBUTES} | {trl_compat.PRECOMPUTE_METHOD} | {
        m for m in trl_compat.OVERRIDDEN_METHODS + trl_compat.CALLED_METHODS if m.startswith("_")
    } | {"compute_ref_log_probs"} | {name for _, name, _ in trl_compat.FUNCTIONS}
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "trl":
            bad = [a.name for a in node.names if node.module != "trl" or a.name not in PUBLIC_TRL]
            if bad:
                found.append(f"{where} from {node.module} import {', '.join(bad)}")
        elif isinstance(node, ast.Import) and any(a.name.startswith("trl.") for a in node.names):
            found.append(f"{where} import {', '.join(a.name for a in node.names)}")
        elif isinstance(node, ast.Attribute) and node.attr in private:
            if not (isinstance(node.value, ast.Name) and node.value.id == "trl_compat"):
                found.append(f"{where} .{node.attr}")
        elif isinstance(node, (ast.FunctionDef, ast.Name)) and getattr(node, "name", getattr(node, "id", "")) in private:
            found.append(f"{where} {getattr(node, 'name', getattr(node, 'id', ''))}")
    return found


def test_only_trl_compat_touches_trl_internals():
    assert (ROOT / "distill" / "fast_dpo" / "trl_compat.py") in SOURCES
    found = [hit for path in SOURCES if path.name != "trl_compat.py" for hit in _trl_internals_used(path)]
    assert not found, "TRL internals used outside distill/fast_dpo/trl_compat.py:\n" + "\n".join(found)


def test_the_scan_catches_a_private_import_and_attribute(tmp_path, monkeypatch):
    monkeypatch.setattr("tests.test_fast_dpo_trl_compat.ROOT", tmp_path)
    bad = tmp_path / "bad.py"
    bad.write_text("from trl.trainer.utils import use_adapter\nfrom trl import DPOTrainer, SFTTrainer\n"
                   "def f(t):\n    return t._metrics, t.compute_ref_log_probs(1, 2)\n")
    hits = _trl_internals_used(bad)
    assert [h.split(" ", 1)[1] for h in hits] == [
        "from trl.trainer.utils import use_adapter", "from trl import SFTTrainer", "._metrics", ".compute_ref_log_probs"
    ], hits
