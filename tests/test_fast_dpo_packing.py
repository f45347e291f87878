"""Packing, masks and batching of distill.fast_dpo, without a model."""

import random

import pytest
import torch
from torch.nn.attention.flex_attention import create_mask

from distill.fast_dpo.attention import (
    dense_mask,
    docs_attention,
    document_layout,
    mask_mod_for,
    resolve_backend,
)
from distill.fast_dpo.packing import (
    CHOSEN,
    IGNORE,
    REJECTED,
    TRUNK,
    Pair,
    collate_rows,
    layout_pair,
    logical_tokens,
    packed_length,
    plan_packs,
    truncate_pair,
)
from distill.fast_dpo.trainer import PairBatchSampler
from eval.io import DistillError


def random_pairs(n, seed=0, prompt=(3, 12), completion=(1, 6)):
    rng = random.Random(seed)

    def ids(lo, hi):
        return [rng.randrange(5, 100) for _ in range(rng.randint(lo, hi))]

    return [Pair(ids(*prompt), ids(*completion), ids(*completion), index=i) for i in range(n)]


def test_shared_layout_restarts_positions_and_scores_each_completion_from_its_own_context():
    pair = Pair([5, 6, 7], [8, 9], [10])
    lay = layout_pair(pair)
    assert lay.input_ids == [5, 6, 7, 8, 9, 7, 10]
    assert lay.position_ids == [0, 1, 2, 3, 4, 2, 3]
    assert lay.branch == [TRUNK, TRUNK, CHOSEN, CHOSEN, CHOSEN, REJECTED, REJECTED]
    # token t is scored from t - 1: 8 from the prompt's last token, 10 from its copy at the head of the rejected branch
    assert lay.targets == [IGNORE, IGNORE, IGNORE, 8, 9, IGNORE, 10]
    assert lay.owner == [-1, -1, -1, 0, 0, -1, 1]
    assert len(lay.input_ids) == packed_length(pair)


def test_unshared_layout_is_the_stock_pair_of_sequences():
    pair = Pair([5, 6, 7], [8, 9], [10])
    lay = layout_pair(pair, share_prompt=False)
    assert lay.input_ids == [5, 6, 7, 8, 9] + [5, 6, 7, 10]
    assert lay.position_ids == [0, 1, 2, 3, 4, 0, 1, 2, 3]
    assert [t for t in lay.targets if t != IGNORE] == [8, 9, 10]
    assert len(lay.input_ids) == packed_length(pair, share_prompt=False) == logical_tokens(pair)


def test_empty_prompt_is_refused():
    with pytest.raises(DistillError, match="empty prompt"):
        layout_pair(Pair([], [1], [2], index=4))


def test_truncation_matches_trl_collator():
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    rng = random.Random(1)
    for _ in range(50):
        max_length = rng.randint(2, 14)
        example = {k: [rng.randrange(1, 50) for _ in range(rng.randint(1, 10))] for k in
                   ("prompt_ids", "chosen_ids", "rejected_ids")}
        batch = DataCollatorForPreference(pad_token_id=0, max_length=max_length)([example])
        p, c, r = truncate_pair(example["prompt_ids"], example["chosen_ids"], example["rejected_ids"], max_length)
        for row, completion in ((0, c), (1, r)):
            kept = batch["attention_mask"][row].sum().item()
            assert batch["input_ids"][row, :kept].tolist() == (p + completion)[:kept]
            assert batch["completion_mask"][row].sum().item() == len(completion)
            assert kept == len(p[:max_length]) + len(completion)


def test_plan_packs_places_every_pair_once_within_budget():
    lengths = [random.Random(i).randint(1, 40) for i in range(200)]
    packs = plan_packs(lengths, 64)
    assert sorted(i for p in packs for i in p) == list(range(200))
    assert all(sum(lengths[i] for i in p) <= 64 for p in packs)
    assert plan_packs(lengths, 64) == packs  # deterministic
    # first-fit decreasing finds the perfect packing of this small case
    assert sorted(map(sorted, plan_packs([6, 4, 5, 5], 10))) == [[0, 1], [2, 3]]


def test_plan_packs_refuses_a_pair_larger_than_the_budget():
    with pytest.raises(DistillError, match="pair 1 needs 70"):
        plan_packs([10, 70, 20], 64)


def test_collate_numbers_sequences_chosen_then_rejected_across_rows():
    pairs = random_pairs(5)
    batch = collate_rows([pairs[:3], pairs[3:]], pad_id=0)
    k = len(pairs)
    assert batch["pair_index"].tolist() == [0, 1, 2, 3, 4]
    index, labels = batch["sequence_index"], batch["completion_labels"]
    for j, pair in enumerate(pairs):
        assert labels[index == j].tolist() == list(pair.chosen_ids)
        assert labels[index == k + j].tolist() == list(pair.rejected_ids)
    assert ((index >= 0) == (labels != IGNORE)).all()
    # the shorter row is padded with document -1, which no real token can see
    lengths = [sum(packed_length(p) for p in row) for row in (pairs[:3], pairs[3:])]
    short = lengths.index(min(lengths))
    assert (batch["doc_ids"][short, min(lengths):] == -1).all()
    assert batch["logical_tokens"].item() == sum(logical_tokens(p) for p in pairs)


def test_collate_pads_to_a_fixed_width_or_a_multiple():
    pairs = random_pairs(3)
    n = sum(packed_length(p) for p in pairs)
    assert collate_rows([pairs], pad_id=0, pad_to=n + 7)["input_ids"].shape == (1, n + 7)
    assert collate_rows([pairs], pad_id=0, pad_to_multiple_of=16)["input_ids"].shape[1] == -(-n // 16) * 16
    with pytest.raises(DistillError, match="does not fit"):
        collate_rows([pairs], pad_id=0, pad_to=n - 1)


@pytest.mark.parametrize("share_prompt", [True, False])
def test_dense_mask_and_flex_mask_mod_encode_one_rule(share_prompt):
    pairs = random_pairs(6, seed=3)
    batch = collate_rows([pairs[:2], pairs[2:]], pad_id=0, share_prompt=share_prompt, pad_to_multiple_of=32)
    doc, branch = batch["doc_ids"], batch["branch"]
    rows, t = doc.shape
    dense = dense_mask(doc, branch)
    flex_rule = create_mask(mask_mod_for(doc, branch), rows, 1, t, t, device="cpu")
    assert torch.equal(dense, flex_rule)


def test_mask_gives_each_completion_exactly_its_stock_context():
    pairs = random_pairs(4, seed=5)
    batch = collate_rows([pairs], pad_id=0)
    mask = dense_mask(batch["doc_ids"], batch["branch"])[0, 0]
    k = len(pairs)
    index = batch["sequence_index"][0]
    for j, pair in enumerate(pairs):
        p, c, r = len(pair.prompt_ids), len(pair.chosen_ids), len(pair.rejected_ids)
        for seq, own in ((j, c), (k + j, r)):
            last = (index == seq).nonzero().max().item()
            # the last completion token sees the whole prompt once and its own completion, nothing else
            assert mask[last].sum().item() == p + own
            assert not mask[last][index == (k + j if seq == j else j)].any()
    # no row is fully masked (SDPA would return NaN), padding included
    assert mask.any(dim=-1).all()


@pytest.mark.parametrize("share_prompt", [True, False])
def test_per_document_attention_equals_the_dense_mask_in_outputs_and_gradients(share_prompt):
    """The docs backend's loop over documents against SDPA with the dense mask of the same rows: two rows with
    padding between them and at the end, grouped-query heads (9 query heads over 3 key/value heads)."""
    import torch.nn.functional as F

    pairs = random_pairs(7, seed=11, prompt=(2, 20), completion=(1, 9))
    batch = collate_rows([pairs[:3], pairs[3:]], pad_id=0, share_prompt=share_prompt, pad_to_multiple_of=16)
    doc, branch = batch["doc_ids"], batch["branch"]
    layout = document_layout(doc, branch)
    assert layout.shape == (1, 1, 7, 5) and layout[0, 0, :, 0].tolist() == [0, 0, 0, 1, 1, 1, 1]
    rows, t = doc.shape
    g = torch.Generator().manual_seed(0)
    q = torch.randn(rows, 9, t, 8, generator=g, requires_grad=True)
    k = torch.randn(rows, 3, t, 8, generator=g, requires_grad=True)
    v = torch.randn(rows, 3, t, 8, generator=g, requires_grad=True)
    weight = torch.randn(rows, t, 9, 8, generator=g) * (doc >= 0)[:, :, None, None]  # padding is never scored
    module = torch.nn.Module().eval()

    ours, _ = docs_attention(module, q, k, v, layout, scaling=0.3)
    (ours * weight).sum().backward()
    ours_grads = [x.grad.clone() for x in (q, k, v)]
    for x in (q, k, v):
        x.grad = None
    dense = F.scaled_dot_product_attention(q, k, v, attn_mask=dense_mask(doc, branch), scale=0.3, enable_gqa=True)
    (dense.transpose(1, 2) * weight).sum().backward()

    real = (doc >= 0)[:, :, None, None]
    torch.testing.assert_close(ours * real, dense.transpose(1, 2) * real, rtol=1e-5, atol=1e-6)
    assert torch.equal(ours[~(doc >= 0)], torch.zeros_like(ours[~(doc >= 0)]))
    for mine, theirs in zip(ours_grads, (q.grad, k.grad, v.grad), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)


def test_per_document_attention_hands_any_other_mask_to_sdpa():
    """The model keeps working for generation after fast DPO switched it to the docs backend."""
    q, k, v = (torch.randn(1, 2, 5, 4) for _ in range(3))
    mask = torch.ones(1, 1, 5, 5, dtype=torch.bool).tril()
    module = torch.nn.Module().eval()
    ours, _ = docs_attention(module, q, k, v, mask, scaling=0.5)
    torch.testing.assert_close(ours, torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, scale=0.5).transpose(1, 2))


def test_auto_backend_is_flex_on_cuda_only():
    assert resolve_backend("auto", "cpu") == "docs"
    assert resolve_backend("auto", "cuda") == "flex"
    with pytest.raises(DistillError):
        resolve_backend("flash", "cpu")


def test_batch_sampler_visits_every_pair_once_per_epoch_in_a_new_order():
    lengths = [random.Random(i).randint(5, 30) for i in range(60)]
    sampler = PairBatchSampler(lengths, packing=True, budget=64, batch_size=8, shuffle=True, seed=0)
    epochs = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        assert sorted(i for b in batches for i in b) == list(range(60))
        epochs.append(batches)
    assert epochs[0] != epochs[1] and sorted(epochs[0]) == sorted(epochs[1])  # same packs, new order

    plain = PairBatchSampler(lengths, packing=False, budget=64, batch_size=8, shuffle=False, seed=0)
    batches = list(plain)
    assert [len(b) for b in batches] == [8] * 7 + [4] and len(plain) == 8
