"""`fast: true` in a DPO recipe trains with distill.fast_dpo through the real entry point."""

import math
from pathlib import Path

import torch
from safetensors.torch import load_file

from distill.fast_dpo import FastDPOTrainer
from distill.recipe import parse_recipe
from distill.train import run_stage

ROOT = Path(__file__).resolve().parents[1]
SFT_RECIPE = ROOT / "recipes" / "debug" / "tiny_cpu.yaml"
DPO_RECIPE = ROOT / "recipes" / "debug" / "tiny_cpu_dpo.yaml"


def test_fast_dpo_recipe_trains_the_sft_adapter_with_a_cached_reference(tmp_path, tiny_model_dir, tiny_pairs_dir):
    local = ["--model_name_or_path", str(tiny_model_dir), "--dataset_path", str(tiny_pairs_dir)]
    run_stage(parse_recipe([str(SFT_RECIPE), *local, "--output_dir", str(tmp_path / "sft"), "--max_steps", "2"]))
    cache = tmp_path / "ref_cache"
    args = [str(DPO_RECIPE), *local, "--output_dir", str(tmp_path / "dpo"), "--max_steps", "3",
            "--init_adapter", str(tmp_path / "sft"), "--fast", "true", "--pack_tokens", "2048",
            "--ref_cache_dir", str(cache), "--report_to", "none"]
    recipe = parse_recipe(args)
    assert recipe.training.fast is True
    trainer = run_stage(recipe)
    assert isinstance(trainer, FastDPOTrainer)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    before = load_file(tmp_path / "sft" / "adapter_model.safetensors")
    after = load_file(tmp_path / "dpo" / "adapter_model.safetensors")
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    assert any(cache.rglob("*.safetensors")), "reference log-probs were cached on disk"
    # without the flag the same recipe keeps TRL's trainer
    plain = parse_recipe([str(DPO_RECIPE), *local, "--output_dir", str(tmp_path / "plain")])
    assert plain.training.fast is False
