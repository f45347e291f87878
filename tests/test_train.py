"""End to end on CPU with a tiny local model and 4-bit QLoRA: SFT, then DPO from the SFT adapter, the chained
CLI, the checkpoint folder and run.json, and the dequantise-then-merge."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distill import modeling
from distill.recipe import parse_recipe
from distill.train import run_stage

ROOT = Path(__file__).resolve().parents[1]
SFT_RECIPE = ROOT / "recipes" / "debug" / "tiny_cpu.yaml"
DPO_RECIPE = ROOT / "recipes" / "debug" / "tiny_cpu_dpo.yaml"


def _local(model_dir, pairs_dir) -> list[str]:
    return ["--model_name_or_path", str(model_dir), "--dataset_path", str(pairs_dir)]


def base_state(model) -> dict[str, torch.Tensor]:
    """The frozen base's tensors (4-bit packed weights and their quantisation state included), keyed as in a
    model without adapters."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return {
        k.replace(".base_layer", ""): v.detach().clone()
        for k, v in model.state_dict().items()
        if "lora_" not in k
    }


def assert_same_base(trained, fresh):
    got, want = base_state(trained), base_state(fresh)
    assert got.keys() == want.keys()
    changed = [k for k in want if not torch.equal(got[k].cpu(), want[k].cpu())]
    assert not changed, f"base weights changed: {changed[:5]}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir, tiny_pairs_dir):
    out = tmp_path_factory.mktemp("runs")
    local = _local(tiny_model_dir, tiny_pairs_dir)
    sft = parse_recipe([str(SFT_RECIPE), *local, "--output_dir", str(out / "sft"), "--max_steps", "4"])
    sft_trainer = run_stage(sft)
    dpo = parse_recipe(
        [
            str(DPO_RECIPE),
            *local,
            "--output_dir",
            str(out / "dpo"),
            "--max_steps",
            "4",
            "--init_adapter",
            str(out / "sft"),
            "--eval_strategy",
            "steps",
            "--eval_steps",
            "4",
        ]
    )
    dpo_trainer = run_stage(dpo)
    return {"sft": (sft, sft_trainer), "dpo": (dpo, dpo_trainer), "out": out}


def _losses(trainer, key="loss"):
    return [h[key] for h in trainer.state.log_history if key in h]


def test_sft_logs_a_loss_trains_lora_and_keeps_the_4bit_base(runs):
    import bitsandbytes as bnb

    recipe, trainer = runs["sft"]
    losses = _losses(trainer)
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    model = trainer.model
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules()), "the base is 4-bit"
    adapter = load_file(Path(recipe.training.output_dir) / "adapter_model.safetensors")
    lora_b = {k: v for k, v in adapter.items() if "lora_B" in k}
    assert len(lora_b) == 2 * 7, "LoRA on all 7 linear layers of both blocks"
    assert all(v.abs().sum() > 0 for v in lora_b.values()), "every lora_B left its zero init"
    fresh, _ = modeling.load_student(recipe.model, recipe.training)
    assert_same_base(model, fresh)


def test_dpo_from_the_sft_adapter_trains_it_and_keeps_the_base(runs):
    recipe, trainer = runs["dpo"]
    assert len(_losses(trainer)) == 4 and all(math.isfinite(x) for x in _losses(trainer))
    assert _losses(trainer, "rewards/accuracies") and _losses(trainer, "eval_rewards/accuracies")
    sft_dir, dpo_dir = Path(runs["sft"][0].training.output_dir), Path(recipe.training.output_dir)
    before, after = (
        load_file(sft_dir / "adapter_model.safetensors"),
        load_file(dpo_dir / "adapter_model.safetensors"),
    )
    assert before.keys() == after.keys()
    assert all(not torch.equal(before[k], after[k]) for k in before), (
        "DPO moved every LoRA tensor of the SFT adapter"
    )
    assert not (dpo_dir / "ref").exists(), "the frozen reference copy is not part of the result"
    fresh, _ = modeling.load_student(recipe.model, recipe.training)
    assert_same_base(trainer.model, fresh)


def test_checkpoint_folder_and_run_json(runs, tiny_pairs_dir):
    from datasets import load_from_disk

    for stage in ("sft", "dpo"):
        recipe, trainer = runs[stage]
        out = Path(recipe.training.output_dir)
        for name in (
            "adapter_config.json",
            "adapter_model.safetensors",
            "tokenizer.json",
            "chat_template.jinja",
            "run.json",
            "trainer_state.json",
            "all_results.json",
            "checkpoint-4/trainer_state.json",
        ):
            assert (out / name).is_file(), f"{stage}: {name}"
        assert list((out / "runs").glob("*/events.out.tfevents.*")), "TensorBoard logs"
        info = json.loads((out / "run.json").read_text())
        assert info["status"] == "finished" and info["stage"] == stage and info["global_step"] == 4
        assert info["config"]["model"]["load_in_4bit"] is True
        assert info["config"]["training"]["max_steps"] == 4, "the resolved config, flags applied"
        assert info["config"]["script"]["dataset_path"] == str(tiny_pairs_dir)
        assert info["overrides"][:2] == ["--model_name_or_path", recipe.model.model_name_or_path]
        assert info["git"]["sha"] and len(info["git"]["sha"]) == 40
        data = load_from_disk(str(tiny_pairs_dir))
        assert info["dataset"]["fingerprints"] == {k: v._fingerprint for k, v in data.items()}
        assert info["dataset"]["teacher_model"] == "Qwen/Qwen2.5-72B-Instruct"
        assert info["libraries"]["trl"] == "1.16.0" or info["libraries"]["trl"].startswith("1.16")
        assert info["hardware"]["device"] == "cpu" and info["hardware"]["world_size"] == 1
        assert info["audit"]["truncated_share"] == 0 and info["audit"]["prompt"]["max"] > 0
        assert info["throughput"]["steps_run"] == 4
        assert "hf_" not in (out / "run.json").read_text()
    dpo_info = json.loads((Path(runs["dpo"][0].training.output_dir) / "run.json").read_text())
    assert dpo_info["init_adapter"] == runs["sft"][0].training.output_dir
    assert "eval_loss" in dpo_info["metrics"]


def test_merge_dequantises_before_merging(runs, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from distill.cli import main

    recipe, _ = runs["sft"]
    ckpt = recipe.training.output_dir
    assert main(["merge", ckpt, "--out", str(tmp_path / "merged"), "--dtype", "float32"]) == 0
    meta = json.loads((tmp_path / "merged" / "merge.json").read_text())
    assert meta["dequantized_from_4bit"] is True and meta["run"]["stage"] == "sft"
    assert not list(tmp_path.glob(".merged.*")), "no temporary folder left behind"

    x = torch.tensor([[5, 17, 42, 99, 120, 7, 8, 9, 300, 11]])
    base, _ = modeling.load_student(recipe.model, recipe.training)
    trained = PeftModel.from_pretrained(base, ckpt).eval()  # what training computed: 4-bit base + adapter
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    naive = (
        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(recipe.model.model_name_or_path), ckpt)
        .merge_and_unload()
        .eval()
    )
    with torch.no_grad():
        want, got, wrong = trained(x).logits, merged(x).logits, naive(x).logits
    assert (want - got).abs().max() < 1e-4
    assert (want - wrong).abs().max() > 100 * (want - got).abs().max(), (
        "merging into unquantised weights drifts"
    )
    assert main(["merge", ckpt, "--out", str(tmp_path / "merged")]) == 2, "refuses to overwrite"


def test_chain_cli_trains_both_stages_and_a_rerun_skips_them(
    tmp_path, monkeypatch, caplog, tiny_model_dir, tiny_pairs_dir
):
    from distill.cli import main

    monkeypatch.chdir(tmp_path)
    argv = [
        "train",
        "--chain",
        str(SFT_RECIPE),
        str(DPO_RECIPE),
        *_local(tiny_model_dir, tiny_pairs_dir),
        "--max_steps",
        "2",
        "--save_steps",
        "2",
    ]
    assert main(argv) == 0
    sft, dpo = tmp_path / "checkpoints" / "tiny-cpu-sft", tmp_path / "checkpoints" / "tiny-cpu-dpo"
    dpo_info = json.loads((dpo / "run.json").read_text())
    assert dpo_info["status"] == "finished" and dpo_info["init_adapter"] == "checkpoints/tiny-cpu-sft"
    assert json.loads((sft / "run.json").read_text())["global_step"] == 2
    stamp = (dpo / "adapter_model.safetensors").stat().st_mtime_ns
    caplog.clear()
    assert main(argv) == 0
    assert caplog.text.count("nothing to train") == 2
    assert (dpo / "adapter_model.safetensors").stat().st_mtime_ns == stamp


def test_chain_refuses_per_stage_flags_and_checks_every_recipe_first(tmp_path, capsys):
    from distill.cli import main

    assert main(["train", "--chain", str(SFT_RECIPE), str(DPO_RECIPE), "--output_dir", "x"]) == 2
    assert "differ per stage" in capsys.readouterr().err
    bad = tmp_path / "dpo.yaml"
    bad.write_text(DPO_RECIPE.read_text() + "bogus_key: 1\n")
    assert main(["train", "--chain", str(SFT_RECIPE), str(bad)]) == 2
    assert "bogus_key" in capsys.readouterr().err
    assert not (tmp_path / "checkpoints").exists()


def test_sft_messages_format_with_assistant_only_loss(tmp_path, tiny_model_dir, tiny_pairs_dir):
    recipe = parse_recipe(
        [
            str(SFT_RECIPE),
            *_local(tiny_model_dir, tiny_pairs_dir),
            "--output_dir",
            str(tmp_path / "m"),
            "--max_steps",
            "1",
            "--sft_format",
            "messages",
            "--assistant_only_loss",
            "true",
            "--save_strategy",
            "no",
        ]
    )
    trainer = run_stage(recipe)
    assert math.isfinite(_losses(trainer)[0])
    row = trainer.train_dataset[0]
    trained_on = [t for t in row["labels"] if t != -100]
    # assistant-only: the tool schemas and the question are masked out of the loss, the answer is not
    assert 0 < len(trained_on) < len(row["input_ids"]) / 2
    assert trainer.processing_class.decode(trained_on).startswith("<tool_call>")


def test_dpo_with_a_fresh_adapter_uses_the_base_as_its_reference(tmp_path, tiny_model_dir, tiny_pairs_dir):
    recipe = parse_recipe(
        [
            str(DPO_RECIPE),
            *_local(tiny_model_dir, tiny_pairs_dir),
            "--output_dir",
            str(tmp_path / "d"),
            "--max_steps",
            "2",
            "--learning_rate",
            "0",
            "--save_strategy",
            "no",
            "--precompute_ref_log_probs",
            "false",
            "--lora_r",
            "4",
        ]
    )
    recipe.script.init_adapter = None  # a fresh LoRA adapter, as `trl dpo --use_peft` would make
    trainer = run_stage(recipe)
    assert trainer.ref_model is None, "no second model"
    assert list(trainer.model.peft_config) == ["default"], "no reference copy of the adapter either"
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    # A fresh adapter starts as the identity (lora_B = 0) and lr 0 keeps it there: policy == base == reference.
    assert _losses(trainer) == pytest.approx([math.log(2)] * 2, abs=1e-3)


def test_trains_on_what_distill_pairs_writes(tmp_path, tiny_model_dir):
    """The real producer: `distill pairs` output (OUT/dataset, card, pairs_stats.json) goes straight into a recipe."""
    from distill.cli import main
    from distill.testing.tiny_pairs import CITIES, TOOLS

    tasks, traces = [], []
    for i, city in enumerate(CITIES * 2):
        tid = f"weather_{i}"
        tasks.append(
            {
                "id": tid,
                "category": "simple",
                "tools": [TOOLS["get_weather"], TOOLS["calculate_area"]],
                "messages": [{"role": "user", "content": f"What's the weather in {city} in celsius?"}],
                "expected": [{"name": "get_weather", "arguments": {"city": [city], "unit": ["celsius", ""]}}],
            }
        )
        for sample, (answer_city, text) in enumerate(
            [(city, None), ("Atlantis", None), (None, "It is sunny.")]
        ):
            raw = text or (
                '<tool_call>\n{"name": "get_weather", "arguments": {"city": "'
                + answer_city
                + '", "unit": "celsius"}}\n</tool_call>'
            )
            traces.append({"task_id": tid, "model": "org/teacher-72b", "sample": sample, "raw": raw})
    (tmp_path / "tasks.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tasks))
    (tmp_path / "traces.jsonl").write_text("".join(json.dumps(t) + "\n" for t in traces))
    pairs = tmp_path / "pairs"
    assert (
        main(
            [
                "pairs",
                "--tasks",
                str(tmp_path / "tasks.jsonl"),
                "--traces",
                str(tmp_path / "traces.jsonl"),
                "--out",
                str(pairs),
                "--synthetic",
                "1",
                "--test-size",
                "0.25",
            ]
        )
        == 0
    )

    recipe = parse_recipe(
        [
            str(SFT_RECIPE),
            "--model_name_or_path",
            str(tiny_model_dir),
            "--dataset_path",
            str(pairs),
            "--output_dir",
            str(tmp_path / "run"),
            "--max_steps",
            "2",
            "--save_strategy",
            "no",
        ]
    )
    trainer = run_stage(recipe)
    assert math.isfinite(_losses(trainer)[0])
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["dataset"]["teacher_model"] == "org/teacher-72b"
    assert info["dataset"]["teacher_model_from"] == str(pairs / "pairs_stats.json")
    assert set(info["dataset"]["rows"]) == {"train", "test"}
