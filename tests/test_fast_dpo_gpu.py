"""The CUDA path of distill.fast_dpo: block-sparse flex attention gives what the dense-mask SDPA path gives
(which the CPU tests check against TRL), and the trainer matches TRL's loss on a CUDA device."""

import random

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_flex_attention_matches_dense_sdpa_in_logps_and_gradients(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from distill.fast_dpo.attention import attention_mask, use_backend
    from distill.fast_dpo.logps import ensure_fused_lm_head, sequence_logps
    from distill.fast_dpo.packing import Pair, collate_rows

    rng = random.Random(0)

    def ids(lo, hi):
        return [rng.randrange(5, 400) for _ in range(rng.randint(lo, hi))]

    pairs = [Pair(ids(100, 300), ids(5, 40), ids(5, 40), index=i) for i in range(12)]
    batch = {k: v.cuda() for k, v in collate_rows([pairs[:6], pairs[6:]], pad_id=0, pad_to=2048).items()}
    results = {}
    for backend in ("sdpa", "flex"):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).cuda()
        use_backend(model, backend)
        ensure_fused_lm_head(model)
        out = sequence_logps(model, batch, attention_mask(batch["doc_ids"], batch["branch"], backend))
        out.logps.sum().backward()
        results[backend] = (out.logps.detach(), {n: p.grad for n, p in model.named_parameters()})
    torch.testing.assert_close(results["flex"][0], results["sdpa"][0], rtol=1e-4, atol=1e-3)
    for name, grad in results["sdpa"][1].items():
        torch.testing.assert_close(results["flex"][1][name], grad, rtol=1e-3, atol=1e-4, msg=name)


def test_fast_trainer_matches_trl_on_cuda(tiny_model_dir, tmp_path):
    from datasets import Dataset
    from transformers import AutoTokenizer

    from tests.test_fast_dpo import (
        fast_trainer,
        load_model,
        perturb_adapter,
        tool_preference_rows,
        trl_trainer,
    )

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    dataset = Dataset.from_list(tool_preference_rows(8))
    stock = trl_trainer(load_model(tiny_model_dir), dataset, tokenizer, tmp_path, use_cpu=False)
    fast = fast_trainer(load_model(tiny_model_dir), dataset, tokenizer, tmp_path, use_cpu=False)
    assert fast._backend == "flex"
    for trainer in (stock, fast):
        perturb_adapter(trainer.model)
    n = len(stock.train_dataset)
    batch = stock.data_collator([stock.train_dataset[i] for i in range(n)])
    stock_loss = stock.compute_loss(stock.model, {k: v.cuda() for k, v in batch.items()})
    fast_batch = {k: v.cuda() for k, v in next(iter(fast.get_train_dataloader())).items()}
    fast_loss = fast.compute_loss(fast.model, fast_batch)
    torch.testing.assert_close(fast_loss, stock_loss, rtol=1e-4, atol=1e-5)
    fast.train()  # a few real steps through flex attention, gradient checkpointing and the optimizer
    assert fast.state.global_step > 0
