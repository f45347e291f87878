"""Every recipe parses through the real TrlParser and builds its quantization and LoRA configs (no weights);
recipe errors name the file and key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from distill.modeling import build_lora_config, build_quantization_config
from distill.recipe import parse_recipe, resolve_chat_template
from eval.io import DistillError

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(
    p.relative_to(ROOT) for p in (ROOT / "recipes").glob("*/*.yaml") if p.parent.name != "accelerate"
)
STUDENTS = sorted({p.parent.name for p in RECIPES if p.parent.name != "debug"})
ACCELERATE = sorted((ROOT / "recipes" / "accelerate").glob("*.yaml"))


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(ROOT)  # recipes name paths relative to the repository root


@pytest.fixture
def bf16_gpu(monkeypatch):
    """Parse GPU recipes on a CPU-only machine: TrainingArguments refuses bf16 without a bf16 GPU, which is a
    property of the machine that runs the recipe, not of the recipe."""
    import transformers.training_args

    monkeypatch.setattr(transformers.training_args, "is_torch_bf16_gpu_available", lambda: True)


def test_the_recipe_set_is_complete():
    assert len(STUDENTS) >= 6, STUDENTS
    for student in STUDENTS:
        names = {p.name for p in RECIPES if p.parent.name == student}
        assert {"sft.yaml", "dpo.yaml"} <= names <= {"sft.yaml", "dpo.yaml", "grpo.yaml"}, (student, names)
    assert {p.stem for p in ACCELERATE} == {"single_gpu", "multi_gpu", "zero2", "zero3", "fsdp2_qlora"}
    assert Path("recipes/debug/tiny_cpu.yaml") in RECIPES and (ROOT / "recipes" / "README.md").is_file()


@pytest.mark.parametrize("path", RECIPES, ids=str)
def test_recipe_parses_and_builds_qlora_configs(path, bf16_gpu):
    import torch
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig

    text = path.read_text()
    header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    assert "Hardware:" in header, f"{path}: the header states its hardware assumptions"
    assert re.search(rf"(accelerate launch|distill train).*{re.escape(str(path))}", header), (
        f"{path}: the header gives the exact launch command for this file"
    )

    recipe = parse_recipe([str(path)])
    stage = recipe.script.stage
    assert stage == ("dpo" if "dpo" in path.stem else "grpo" if "grpo" in path.stem else "sft")
    assert recipe.model.use_peft and recipe.model.load_in_4bit
    assert recipe.training.output_dir.startswith("checkpoints/")
    if recipe.script.chat_template:
        resolve_chat_template(recipe.script.chat_template)

    on_cpu = bool(recipe.training.use_cpu)
    quant = build_quantization_config(recipe.model, use_cpu=on_cpu)
    assert isinstance(quant, BitsAndBytesConfig)
    assert quant.load_in_4bit and quant.bnb_4bit_quant_type == "nf4" and quant.bnb_4bit_use_double_quant
    if on_cpu:
        assert quant.bnb_4bit_compute_dtype == torch.float32
    else:
        assert quant.bnb_4bit_compute_dtype == torch.bfloat16 and recipe.training.bf16
        assert str(quant.bnb_4bit_quant_storage) == "torch.bfloat16", "FSDP needs storage == dtype"
        assert recipe.training.gradient_checkpointing
    lora = build_lora_config(recipe.model)
    assert isinstance(lora, LoraConfig) and lora.target_modules == "all-linear"

    if stage == "dpo":
        sft = parse_recipe(
            [str(path.with_name(path.name.replace("_dpo", "").replace("dpo.yaml", "sft.yaml")))]
        )
        assert recipe.script.init_adapter == sft.training.output_dir, (
            "DPO starts from this folder's SFT adapter"
        )
        assert recipe.training.precompute_ref_log_probs


@pytest.mark.parametrize("path", ACCELERATE, ids=lambda p: p.name)
def test_accelerate_config_is_valid(path):
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(path)  # refuses unknown keys
    assert config.mixed_precision == "bf16"
    assert f"--config_file recipes/accelerate/{path.name}" in path.read_text()


def _write(tmp_path, data: dict, name="r.yaml") -> str:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return str(p)


BASE = {
    "stage": "sft",
    "model_name_or_path": "some/model",
    "dataset_path": "data/pairs",
    "use_peft": True,
    "load_in_4bit": True,
    "max_length": 256,
    "use_cpu": True,
    "bf16": False,
}


def test_unknown_key_names_file_key_and_suggestion(tmp_path):
    path = _write(tmp_path, {**BASE, "learning_rat": 1e-4})
    with pytest.raises(
        DistillError,
        match=r"r\.yaml: unknown key\(s\) for stage sft: 'learning_rat' \(did you "
        r"mean 'learning_rate'\?\)",
    ):
        parse_recipe([path])


def test_dpo_keys_are_unknown_to_an_sft_recipe(tmp_path):
    with pytest.raises(DistillError, match="'beta'"):
        parse_recipe([_write(tmp_path, {**BASE, "beta": 0.1})])


def test_flags_override_the_file_and_unknown_flags_fail(tmp_path):
    path = _write(tmp_path, {**BASE, "learning_rate": 1e-4, "lora_r": 8})
    recipe = parse_recipe([path, "--learning_rate", "3e-5", "--lora_r", "32"])
    assert recipe.training.learning_rate == 3e-5 and recipe.model.lora_r == 32
    assert recipe.training.output_dir == f"checkpoints/{tmp_path.name}-sft"  # default: recipe folder + stage
    with pytest.raises(DistillError, match="not_a_key"):
        parse_recipe([path, "--not_a_key", "1"])
    with pytest.raises(DistillError, match="learning_rate"):
        parse_recipe([path, "--learning_rate", "fast"])


def test_null_on_the_command_line_clears_a_key_as_in_yaml(tmp_path):
    path = _write(tmp_path, {**BASE, "init_adapter": str(tmp_path / "sft"), "chat_template": "hermes_tool"})
    recipe = parse_recipe([path, "--init_adapter", "null", "--chat_template=None", "--sft_no_call_share", "null"])
    assert recipe.script.init_adapter is None and recipe.script.chat_template is None
    assert recipe.script.sft_no_call_share is None
    kept = parse_recipe([path])  # without the flags the file's values stand
    assert kept.script.init_adapter == str(tmp_path / "sft") and kept.script.chat_template == "hermes_tool"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"stage": "ppo"}, "key 'stage' must be one of sft, dpo"),
        ({"model_name_or_path": None}, "'model_name_or_path' is required"),
        ({"dataset_path": None}, "'dataset_path' is required"),
        ({"use_peft": False}, "'use_peft' must be true"),
        ({"max_truncated_share": 1.5}, "'max_truncated_share' is a share between 0 and 1"),
        ({"chat_template": "no_such_template"}, "neither a template shipped with distill"),
        ({"assistant_only_loss": True}, "assistant_only_loss needs sft_format: messages"),
    ],
)
def test_bad_values_are_errors_naming_the_key(tmp_path, change, message):
    data = {k: v for k, v in {**BASE, **change}.items() if v is not None}
    with pytest.raises(DistillError, match=re.escape(message)):
        parse_recipe([_write(tmp_path, data)])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(DistillError, match="no such recipe file"):
        parse_recipe([str(tmp_path / "nope.yaml")])
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n- not a mapping\n")
    with pytest.raises(DistillError, match="bad.yaml: a recipe is a YAML mapping"):
        parse_recipe([str(bad)])


def test_train_and_merge_help_explain_themselves(capsys):
    from distill.cli import main

    for command, words in (
        ("train", ["--chain", "recipe", "override", "resumes", "--list-keys"]),
        ("merge", ["--out", "dequantised", "run.json", "--base-4bit"]),
    ):
        try:
            code = main([command, "--help"])  # `train` prints its usage and returns; argparse exits
        except SystemExit as exit_info:
            code = exit_info.code
        assert code == 0
        out = capsys.readouterr().out
        for word in words:
            assert word in out, (command, word)


def test_list_keys_prints_every_key_with_help(capsys):
    from distill.train import main

    assert main(["--list-keys", "dpo"]) == 0
    out = capsys.readouterr().out
    for key in (
        "--max_truncated_share",
        "--init_adapter",
        "--beta",
        "--precompute_ref_log_probs",
        "--lora_r",
    ):
        assert key in out
    assert "lose completion tokens" in " ".join(out.split()), "distill's own keys carry their help"


def test_console_script_forms_of_train(tmp_path, capsys):
    """What users type: `distill train --list-keys`, `--config`, and the --chain guard in both flag spellings."""
    from distill.cli import main

    assert main(["train", "--list-keys", "dpo"]) == 0
    assert "--precompute_ref_log_probs" in capsys.readouterr().out
    assert main(["train", "--list-keys", "ppo"]) == 2
    assert "unknown stage 'ppo'" in capsys.readouterr().err
    assert main(["train", "--config", _write(tmp_path, {**BASE, "bogus": 1})]) == 2
    assert "bogus" in capsys.readouterr().err  # the recipe was read: --config took it
    for flag in ("--output_dir", "--output-dir", "--init-adapter"):
        assert main(["train", "--chain", "a.yaml", "b.yaml", flag, "x"]) == 2
        assert "differ per stage" in capsys.readouterr().err, flag


def test_cli_train_error_exits_2_with_a_message(tmp_path, capsys):
    from distill.cli import main

    assert main(["train", _write(tmp_path, {**BASE, "bogus": 1})]) == 2
    assert "distill train: error:" in capsys.readouterr().err
    assert main(["train", "a.yaml", "b.yaml"]) == 2
    assert "use --chain" in capsys.readouterr().err


def test_gpu_benchmark_dry_run_builds_data_and_valid_recipes(tmp_path, monkeypatch, capsys, bf16_gpu):
    """benchmarks/train_gpu.py runs in one go on a GPU machine; here its data building and recipes are checked."""
    import importlib.util
    import sys

    from datasets import load_from_disk

    spec = importlib.util.spec_from_file_location("train_gpu", ROOT / "benchmarks" / "train_gpu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(
        sys, "argv", ["train_gpu.py", "--dry-run", "--steps", "2", "--batch", "3", "--work", str(tmp_path)]
    )
    assert bench.main() == 0
    assert "nothing trained" in capsys.readouterr().out
    pairs = load_from_disk(str(tmp_path / "pairs"))
    assert pairs["train"].num_rows == 6 and set(pairs["train"].column_names) >= {"prompt", "chosen", "tools"}
    for stage in ("sft", "dpo"):
        recipe = parse_recipe([str(tmp_path / f"{stage}.yaml")])
        assert recipe.script.stage == stage and recipe.model.load_in_4bit and recipe.training.bf16
