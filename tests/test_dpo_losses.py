"""Every DPO loss a recipe exposes trains one step through `distill train` on the tiny model (from an SFT adapter,
as the recipes run it), and bad loss settings are clear errors before any weight loads."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from distill import cli, modeling
from distill.recipe import DPO_LOSS_TYPES, parse_recipe
from eval.io import DistillError

ROOT = Path(__file__).resolve().parents[1]
SFT_RECIPE = ROOT / "recipes" / "debug" / "tiny_cpu.yaml"
DPO_RECIPE = ROOT / "recipes" / "debug" / "tiny_cpu_dpo.yaml"
# The losses the recipes and docs name (docs/training.md, "DPO that does not collapse").
EXPOSED = {"sigmoid": ["sigmoid"], "sigmoid+sft": ["sigmoid", "sft"], "apo_zero": ["apo_zero"],
           "sigmoid_norm": ["sigmoid_norm"]}


@pytest.fixture(scope="module")
def sft_adapter(tmp_path_factory, tiny_model_dir, tiny_pairs_dir):
    out = tmp_path_factory.mktemp("losses") / "sft"
    rc = cli.main(["train", str(SFT_RECIPE), "--model_name_or_path", str(tiny_model_dir), "--dataset_path",
                   str(tiny_pairs_dir), "--output_dir", str(out), "--max_steps", "1", "--report_to", "none"])
    assert rc == 0
    return out


@pytest.mark.parametrize("name", list(EXPOSED))
def test_every_exposed_loss_trains_one_step_through_distill_train(name, sft_adapter, tiny_model_dir, tiny_pairs_dir,
                                                                   tmp_path):
    losses = EXPOSED[name]
    weights = ["--loss_weights", *(["1.0"] * len(losses))] if len(losses) > 1 else []
    out = tmp_path / name
    rc = cli.main(["train", str(DPO_RECIPE), "--model_name_or_path", str(tiny_model_dir), "--dataset_path",
                   str(tiny_pairs_dir), "--init_adapter", str(sft_adapter), "--output_dir", str(out), "--max_steps", "1",
                   "--logging_steps", "1", "--report_to", "none", "--loss_type", *losses, *weights])
    assert rc == 0
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "finished" and info["global_step"] == 1
    assert info["config"]["training"]["loss_type"] == losses
    log = [h for h in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in h]
    assert len(log) == 1 and math.isfinite(log[0]["loss"]) and math.isfinite(log[0]["logps/chosen"])
    guard = info["logps_guard"]  # the guard watched the run: the chosen log-ratio, rewards/chosen / beta
    assert guard["logps_chosen_first"] == log[0]["logps/chosen"] and guard["measure"] == "logratio"
    assert math.isclose(guard["first"], log[0]["rewards/chosen"] / info["config"]["training"]["beta"])


def test_loss_names_are_trls(monkeypatch):
    """The names distill accepts are exactly the ones TRL 1.16's DPOTrainer computes: TRL itself checks them only
    when the first loss is computed, after the model has loaded."""
    from trl import DPOConfig

    help_text = next(f.metadata["help"] for f in DPOConfig.__dataclass_fields__.values() if f.name == "loss_type")
    named = {part.split("`")[0] for part in help_text.split("`'")[1:]}
    assert set(DPO_LOSS_TYPES) == {n.strip("'") for n in named}
    assert set(EXPOSED["sigmoid+sft"]) | {"apo_zero", "sigmoid_norm"} <= set(DPO_LOSS_TYPES)


@pytest.mark.parametrize(("flags", "message"), [
    (["--loss_type", "sigmoidd"], r"key 'loss_type': unknown loss 'sigmoidd' \(did you mean 'sigmoid'\?\)"),
    (["--loss_type", "sigmoid", "sft", "--loss_weights", "1.0"], "loss_weights"),
    (["--logps_guard_nats", "ten"], "logps_guard_nats"),
    (["--logps_guard_nats", "-1"], "logps_guard_nats"),
])
def test_bad_loss_and_guard_settings_fail_before_weights_load(flags, message, monkeypatch, tiny_model_dir,
                                                              tiny_pairs_dir, tmp_path, capsys):
    def no_weights(*a, **k):
        raise AssertionError("weights loaded before the recipe was checked")

    monkeypatch.setattr(modeling, "load_student", no_weights)
    argv = [str(DPO_RECIPE), "--model_name_or_path", str(tiny_model_dir), "--dataset_path", str(tiny_pairs_dir),
            "--output_dir", str(tmp_path / "x"), *flags]
    with pytest.raises(DistillError, match=message):
        parse_recipe(argv)
    assert cli.main(["train", *argv]) == 2
    assert "error:" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_guard_threshold_in_a_recipe_file_must_be_a_number(tmp_path):
    recipe = tmp_path / "dpo.yaml"
    text = DPO_RECIPE.read_text()
    for bad in ("true", "'ten'", "[1, 2]"):
        recipe.write_text(text + f"logps_guard_nats: {bad}\n")
        with pytest.raises(DistillError, match=f"{recipe}: .*logps_guard_nats"):
            parse_recipe([str(recipe)])
    recipe.write_text(text + "logps_guard_nats: null\nlogps_guard_stop: true\n")
    r = parse_recipe([str(recipe)])
    assert r.script.logps_guard_nats is None and r.script.logps_guard_stop is True
