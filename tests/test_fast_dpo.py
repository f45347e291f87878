"""distill.fast_dpo on the tiny model, checked against TRL 1.16's own DPOTrainer code path on the same batch:
per-sequence log-probs, the loss and its gradients for every supported loss type, packed and unpacked layouts,
the reference adapter of an SFT checkpoint, the on-disk reference cache, and a short training run."""

import json

import pytest
import torch

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather for a city",
     "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}},
    {"type": "function", "function": {"name": "calculate_area", "description": "Area of a triangle",
     "parameters": {"type": "object", "properties": {"base": {"type": "integer"}, "height": {"type": "number"}},
                    "required": ["base", "height"]}}},
    {"type": "function", "function": {"name": "convert_currency", "description": "Convert an amount",
     "parameters": {"type": "object", "properties": {"amount": {"type": "number"}, "to": {"type": "string"}},
                    "required": ["amount", "to"]}}},
]
CITIES = ["Paris", "Rome", "Berlin", "Oslo", "Lima", "Quito", "Cairo", "Tokyo", "Delhi", "Sydney"]


def call(name, **arguments):
    return {"role": "assistant", "tool_calls": [{"type": "function", "function": {
        "name": name, "arguments": json.dumps(arguments)}}]}


def tool_preference_rows(n=8, offset=0):
    """Conversational preference pairs in distill's dataset format (tools as a JSON string), with prompts of
    one to three tool schemas and completions of different lengths, as teacher data has."""
    rows = []
    for i in range(offset, offset + n):
        city = CITIES[i % len(CITIES)]
        question = f"What's the weather in {city} in celsius?" + " Please answer quickly." * (i % 3)
        rejected = [
            {"role": "assistant", "content": "I cannot check the weather."},
            call("get_weather", city=city, unit="kelvin"),
            call("calculate_area", base=i, height=2),
        ][i % 3]
        rows.append({
            "prompt": [{"role": "user", "content": question}],
            "chosen": [call("get_weather", city=city, unit="celsius")],
            "rejected": [rejected],
            "tools": json.dumps(TOOLS[: 1 + i % 3]),
        })
    return rows


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def dataset():
    from datasets import Dataset

    return Dataset.from_list(tool_preference_rows(8))


def load_model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def lora():
    from peft import LoraConfig

    return LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")


def common_args(tmp_path, **overrides):
    args = dict(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, report_to=[], seed=0,
                per_device_train_batch_size=8, max_length=1024, gradient_checkpointing=False,
                logging_steps=1, save_strategy="no")
    return {**args, **overrides}


def perturb_adapter(model, seed=1, name="default"):
    """Random LoRA B matrices, so that the policy differs from the reference (B starts at zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n and f".{name}." in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def trl_trainer(model, dataset, tokenizer, tmp_path, peft=True, **overrides):
    from trl import DPOConfig, DPOTrainer

    return DPOTrainer(model, args=DPOConfig(**common_args(tmp_path, **overrides)), train_dataset=dataset,
                      processing_class=tokenizer, peft_config=lora() if peft else None)


def fast_trainer(model, dataset, tokenizer, tmp_path, peft=True, eval_dataset=None, **overrides):
    from distill.fast_dpo import FastDPOConfig, FastDPOTrainer

    overrides.setdefault("ref_cache_dir", str(tmp_path / "ref_cache"))
    return FastDPOTrainer(model, args=FastDPOConfig(**common_args(tmp_path, **overrides)), train_dataset=dataset,
                          eval_dataset=eval_dataset, processing_class=tokenizer,
                          peft_config=lora() if peft else None)


def lora_grads(model):
    return {n.replace(".default", ""): p.grad.detach().clone() for n, p in model.named_parameters()
            if p.grad is not None}


# ---- per-sequence log-probs --------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["docs", "sdpa"])
@pytest.mark.parametrize(
    "layout",
    ["packed", "one_pair_per_row", "unshared_prompt", "full_lm_head", "selected_lm_head", "truncated"],
)
def test_sequence_logps_match_trl(layout, backend, tiny_model_dir, tokenizer, dataset, tmp_path):
    """TRL's compute_ref_log_probs on its padded batch against ours on the packed layout, same model. Packed,
    unpacked and unshared layouts, per-document or dense-mask attention, every LM head: all give TRL's numbers,
    hence each other's."""
    from distill.fast_dpo.attention import attention_mask, use_backend
    from distill.fast_dpo.logps import sequence_logps
    from distill.fast_dpo.packing import collate_rows
    from distill.fast_dpo.trainer import pairs_from_dataset

    max_length = 320 if layout == "truncated" else 1024
    trainer = trl_trainer(load_model(tiny_model_dir), dataset, tokenizer, tmp_path, peft=False, max_length=max_length)
    examples = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
    trl_chosen, trl_rejected = trainer.compute_ref_log_probs(trainer.model, trainer.data_collator(examples))

    pairs = pairs_from_dataset(trainer.train_dataset, max_length)
    if layout == "truncated":  # the case must really cut completions
        assert any(len(p.prompt_ids) + len(p.chosen_ids) == max_length for p in pairs)
    half = len(pairs) // 2
    rows = [[p] for p in pairs] if layout == "one_pair_per_row" else [pairs[:half], pairs[half:]]
    batch = collate_rows(rows, pad_id=tokenizer.pad_token_id, share_prompt=layout != "unshared_prompt")
    use_backend(trainer.model, backend)
    head = {"full_lm_head": "full", "selected_lm_head": "selected"}.get(layout, "fused")
    with torch.no_grad():
        ours = sequence_logps(trainer.model, batch, attention_mask(batch["doc_ids"], batch["branch"], backend),
                              lm_head=head)
    chosen, rejected = ours.logps.chunk(2)
    torch.testing.assert_close(chosen, trl_chosen, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(rejected, trl_rejected, rtol=1e-5, atol=1e-4)
    assert ours.counts.tolist() == [len(p.chosen_ids) for p in pairs] + [len(p.rejected_ids) for p in pairs]


# ---- loss and gradients ------------------------------------------------------------------------------------

LOSS_CASES = {
    "sigmoid": dict(loss_type=["sigmoid"], beta=0.1),
    "ipo": dict(loss_type=["ipo"], beta=0.5),
    "hinge": dict(loss_type=["hinge"], beta=0.3),
    "robust": dict(loss_type=["robust"], beta=0.1, label_smoothing=0.2),
    "sigmoid+sft": dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5], beta=0.2),
}


@pytest.mark.parametrize("case", LOSS_CASES)
def test_loss_and_gradients_match_trl(case, tiny_model_dir, tokenizer, dataset, tmp_path):
    """Stock DPOTrainer (reference by disabling the adapter at every step) against FastDPOTrainer (reference from
    its cache, filled at construction) on the same pairs, same LoRA weights."""
    config = LOSS_CASES[case]
    stock = trl_trainer(load_model(tiny_model_dir), dataset, tokenizer, tmp_path, **config)
    fast = fast_trainer(load_model(tiny_model_dir), dataset, tokenizer, tmp_path, **config)
    assert fast.ref_cache_hits == {"train": False}
    for trainer in (stock, fast):
        perturb_adapter(trainer.model)

    n = len(stock.train_dataset)
    stock_loss = stock.compute_loss(stock.model, stock.data_collator([stock.train_dataset[i] for i in range(n)]))
    stock_loss.backward()
    batch = next(iter(fast.get_train_dataloader()))
    assert batch["pair_index"].numel() == n  # all pairs fit one pack: the same batch as the stock one
    fast_loss = fast.compute_loss(fast.model, batch)
    fast_loss.backward()

    torch.testing.assert_close(fast_loss, stock_loss, rtol=1e-5, atol=1e-6)
    stock_grads, fast_grads = lora_grads(stock.model), lora_grads(fast.model)
    assert stock_grads.keys() == fast_grads.keys() and stock_grads
    for name in stock_grads:
        torch.testing.assert_close(fast_grads[name], stock_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected",
                "rewards/accuracies", "entropy", "mean_token_accuracy", "num_tokens"):
        assert fast._metrics["train"][key] == pytest.approx(stock._metrics["train"][key], rel=1e-4, abs=1e-5), key


def test_packed_unpacked_and_unshared_batches_give_one_loss(tiny_model_dir, tokenizer, dataset, tmp_path):
    losses, grads = {}, {}
    variants = {"packed": {}, "unpacked": dict(packing=False), "unshared": dict(share_prompt=False),
                "no_cache": dict(cache_ref_logps=False), "dense_sdpa_fused_head": dict(attention_backend="sdpa",
                                                                                       lm_head="fused")}
    for name, flags in variants.items():
        trainer = fast_trainer(load_model(tiny_model_dir), dataset, tokenizer, tmp_path, **flags)
        perturb_adapter(trainer.model)
        batch = next(iter(trainer.get_train_dataloader()))
        if name == "packed":  # on the CPU: per-document attention, so the pack is one row without padding
            assert (trainer._backend, trainer._lm_head) == ("docs", "selected")
            assert batch["input_ids"].shape[0] == 1 and (batch["doc_ids"] >= 0).all()
        if name == "unpacked":
            assert batch["input_ids"].shape[0] == 8  # one row per pair, padded
        if name == "no_cache":
            assert "ref_chosen_logps" not in batch  # the reference runs inside the step
        losses[name] = trainer.compute_loss(trainer.model, batch)
        losses[name].backward()
        grads[name] = lora_grads(trainer.model)
    for name in losses:
        torch.testing.assert_close(losses[name], losses["packed"], rtol=1e-5, atol=1e-6)
        for p in grads["packed"]:
            torch.testing.assert_close(grads[name][p], grads["packed"][p], rtol=1e-4, atol=1e-6)


def test_reference_is_the_sft_adapter_when_training_continues_from_one(tiny_model_dir, tokenizer, dataset, tmp_path):
    """SFT then DPO on one adapter: TRL copies it to a frozen "ref" adapter; the cached reference must be that
    adapter's log-probs, not the base model's."""
    from peft import get_peft_model

    stock_model = get_peft_model(load_model(tiny_model_dir), lora())
    perturb_adapter(stock_model, seed=3)
    fast_model = get_peft_model(load_model(tiny_model_dir), lora())
    fast_model.load_state_dict(stock_model.state_dict())
    from trl import DPOConfig, DPOTrainer

    from distill.fast_dpo import FastDPOConfig, FastDPOTrainer

    stock = DPOTrainer(stock_model, args=DPOConfig(**common_args(tmp_path)), train_dataset=dataset,
                       processing_class=tokenizer)
    fast = FastDPOTrainer(fast_model, args=FastDPOConfig(**common_args(tmp_path, ref_cache_dir=str(tmp_path / "c"))),
                          train_dataset=dataset, processing_class=tokenizer)
    assert "ref" in fast.model.peft_config
    n = len(stock.train_dataset)
    ref_chosen, ref_rejected = stock.compute_ref_log_probs(
        stock.model, stock.data_collator([stock.train_dataset[i] for i in range(n)]))
    store = fast._stores["train"]
    torch.testing.assert_close(store.ref_chosen, ref_chosen, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(store.ref_rejected, ref_rejected, rtol=1e-5, atol=1e-4)
    # the check can fail: the base model (adapter disabled) scores these pairs differently
    from distill.fast_dpo.logps import sequence_logps

    batch = next(iter(fast.get_train_dataloader()))
    with torch.no_grad(), fast.model.disable_adapter():
        base = sequence_logps(fast.model, batch, fast._mask(batch)).logps.chunk(2)[0]
    assert (base - store.ref_chosen[batch["pair_index"]]).abs().max() > 1e-2
    assert fast.reference_cache_parts(store.pairs)["adapter"] not in ("disabled", "none")


# ---- the reference cache through the trainer ---------------------------------------------------------------


def test_reference_cache_is_reused_and_invalidated(tiny_model_dir, tokenizer, dataset, tmp_path):
    from datasets import Dataset

    cache = str(tmp_path / "shared_cache")

    def build(model=None, data=dataset, **overrides):
        return fast_trainer(model or load_model(tiny_model_dir), data, tokenizer, tmp_path, ref_cache_dir=cache,
                            **overrides)

    first = build()
    assert first.ref_cache_hits == {"train": False}
    again = build()
    assert again.ref_cache_hits == {"train": True}
    torch.testing.assert_close(again._stores["train"].ref_chosen, first._stores["train"].ref_chosen)

    trained = build()
    perturb_adapter(trained.model)  # the trained adapter is not the reference: the entry stays valid
    assert trained.reference_cache_parts(trained._stores["train"].pairs) == \
        first.reference_cache_parts(first._stores["train"].pairs)

    changed_model = load_model(tiny_model_dir)
    with torch.no_grad():
        changed_model.model.layers[0].mlp.up_proj.weight[0, 0] += 0.5
    assert build(model=changed_model).ref_cache_hits == {"train": False}

    rows = tool_preference_rows(8)
    rows[5]["chosen"] = [call("get_weather", city="Lima", unit="fahrenheit")]
    assert build(data=Dataset.from_list(rows)).ref_cache_hits == {"train": False}

    assert build(max_length=420).ref_cache_hits == {"train": False}
    assert build(max_length=420).ref_cache_hits == {"train": True}


# ---- training ----------------------------------------------------------------------------------------------


def test_training_runs_over_every_pack_each_epoch_and_evaluates(tiny_model_dir, tokenizer, dataset, tmp_path):
    from datasets import Dataset

    from distill.fast_dpo.packing import packed_length, plan_packs

    trainer = fast_trainer(load_model(tiny_model_dir), dataset, tokenizer, tmp_path, peft=True,
                           eval_dataset=Dataset.from_list(tool_preference_rows(4, offset=8)),
                           pack_tokens=700, num_train_epochs=2, learning_rate=1e-3,
                           gradient_checkpointing=True)
    pairs = trainer._stores["train"].pairs
    n_packs = len(plan_packs([packed_length(p) for p in pairs], 700))
    assert n_packs > 1
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    result = trainer.train()
    assert trainer.state.global_step == 2 * n_packs
    assert torch.isfinite(torch.tensor(result.training_loss))
    changed = [n for n, p in trainer.model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert changed and all("lora_" in n for n in changed)
    logged = [h for h in trainer.state.log_history if "rewards/margins" in h]
    assert logged and logged[-1]["num_tokens"] == 2 * sum(
        2 * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
    metrics = trainer.evaluate()
    assert torch.isfinite(torch.tensor(metrics["eval_loss"])) and "eval_rewards/accuracies" in metrics


def test_unsupported_settings_are_refused(tiny_model_dir, tokenizer, dataset, tmp_path):
    from eval.io import DistillError

    for bad in (dict(loss_type=["aot"]), dict(ld_alpha=0.5), dict(use_weighting=True), dict(lm_head="dense"),
                dict(pack_tokens=1)):
        with pytest.raises(DistillError):
            fast_trainer(load_model(tiny_model_dir), dataset, tokenizer, tmp_path, **bad)
    with pytest.raises(DistillError, match="do not fit"):
        fast_trainer(load_model(tiny_model_dir), dataset, tokenizer, tmp_path, pack_tokens=50)


def test_precompute_ref_log_probs_means_the_cache_and_leaves_the_config_alone(tiny_model_dir, tokenizer, dataset,
                                                                             tmp_path):
    """Recipes written for the stock trainer set precompute_ref_log_probs; under fast: true it selects the
    packed cache, not TRL's padded pass, and the recorded config still says what the recipe said."""
    trainer = fast_trainer(load_model(tiny_model_dir), dataset, tokenizer, tmp_path, precompute_ref_log_probs=True)
    assert trainer.args.precompute_ref_log_probs is True and trainer.ref_cache_hits == {"train": False}
    assert "ref_chosen_logps" not in trainer.train_dataset.column_names  # TRL's padded pass did not run
    batch = next(iter(trainer.get_train_dataloader()))
    assert "ref_chosen_logps" in batch
