"""Per-sequence completion log-probs of a packed batch, with the LM head run only where a completion token is
scored.

    ensure_fused_lm_head(model)                      # TRL's DPOTrainer has already done this for its model
    out = sequence_logps(model, batch, mask)         # batch from packing.collate_rows, mask from attention.py
    chosen, rejected = out.logps.chunk(2)            # [K] each, the order TRL uses

The LM head is the memory peak with a large vocabulary (151,936 for Qwen2.5: 8,000 positions of fp32 logits are
4.5 GiB). TRL 1.16's fused LM head (`add_fused_lm_head`, called with `fused_lm_head=True` and labels) projects in
tiles and, on CUDA, only the positions whose label is not -100, without materialising the logits. The packed
layout keeps "token t is scored from the hidden state at t - 1" true everywhere (see packing.py), so that head
is reused as is rather than written again. Off CUDA that head projects every position (in tiles) rather than the
scored ones, so there `lm_head="selected"` asks the model's own forward for the logits of the scored positions only
(transformers' `logits_to_keep` with a tensor of positions): a pack's completions are a small share of its
tokens, and for those the [positions, vocabulary] logits are small. `lm_head="full"` computes every position's
logits the ordinary way; it exists as the ablation that shows what the other two save.
"""

from __future__ import annotations

import types
from dataclasses import dataclass

import torch

from . import trl_compat
from .packing import IGNORE


@dataclass
class SequenceLogps:
    """`logps[s]` and `counts[s]` for sequence s in [chosen 0..K-1, rejected 0..K-1]. `entropy_sum` and
    `top1_sum` (chosen tokens only, like TRL's mean_token_accuracy) are detached sums for logging, None when the
    LM head did not compute them."""

    logps: torch.Tensor
    counts: torch.Tensor
    entropy_sum: torch.Tensor | None = None
    top1_sum: torch.Tensor | None = None


def _causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under a PEFT (and accelerate) wrapper, where TRL's fused head lives."""
    model = getattr(model, "module", model)  # DistributedDataParallel
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def ensure_fused_lm_head(model: torch.nn.Module) -> None:
    """Give the model TRL's fused LM head unless it has one. add_fused_lm_head replaces `forward` on the
    instance, which is how an already patched model is recognised."""
    lm = _causal_lm(model)
    if not isinstance(vars(lm).get("forward"), types.MethodType):
        trl_compat.add_fused_lm_head(lm)


def segment_sums(values: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    """Sum `values` into `n` slots by `index` (-1 = nowhere). index_add keeps the graph for the gradient."""
    keep = index >= 0
    return values.new_zeros(n).index_add(0, index[keep], values[keep])


def _selected_head(model, kwargs, labels):
    """Per-token log-probs [rows, T - 1] (0 where nothing is scored) from logits computed at the positions that
    score a token in some row only; entropy (all scored tokens) and top-1 (for the logs) from the same logits."""
    targets = labels[:, 1:]
    keep = (targets != IGNORE).any(0).nonzero().squeeze(-1)  # positions t - 1 whose next token is scored
    logits = model(**kwargs, logits_to_keep=keep).logits  # [rows, kept, vocabulary]
    kept_targets = targets[:, keep]
    kept = trl_compat.selective_log_softmax(logits, kept_targets.clamp(min=0))
    scored = kept_targets != IGNORE
    with torch.no_grad():
        log_p = logits.float().log_softmax(-1)
        entropy = -(log_p.exp() * log_p).sum(-1)
        top1 = logits.argmax(-1) == kept_targets

    def spread(values: torch.Tensor) -> torch.Tensor:  # back to [rows, T - 1], zero where not scored
        values = torch.where(scored, values, torch.zeros_like(values))
        return values.new_zeros(targets.shape).index_copy(1, keep, values)

    return spread(kept), spread(entropy), spread(top1)


def sequence_logps(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    attention_mask,
    *,
    lm_head: str = "fused",
) -> SequenceLogps:
    """Run the packed rows through the model and sum each completion's token log-probs."""
    labels = batch["completion_labels"]
    n_seq = 2 * batch["pair_index"].numel()
    # per_token[r, t - 1] scores labels[r, t]; so does sequence_index[r, t]
    index = batch["sequence_index"][:, 1:]
    kwargs = dict(
        input_ids=batch["input_ids"],
        position_ids=batch["position_ids"],
        attention_mask=attention_mask,
        use_cache=False,
    )
    entropy = top1 = None
    if lm_head == "fused":
        per_token, entropy, top1 = trl_compat.fused_forward(model, labels=labels, **kwargs)
    elif lm_head == "selected":
        per_token, entropy, top1 = _selected_head(model, kwargs, labels)
    elif lm_head == "full":
        logits = model(**kwargs).logits[:, :-1]
        per_token = trl_compat.selective_log_softmax(logits, labels[:, 1:].clamp(min=0))
    else:
        raise ValueError(f"lm_head must be 'fused', 'selected' or 'full', got {lm_head!r}")

    width = index.shape[1]  # prompt-learning PEFT would prepend virtual tokens to the outputs
    flat_index = index.reshape(-1)
    logps = segment_sums(per_token[:, -width:].float().reshape(-1), flat_index, n_seq)
    counts = torch.bincount(flat_index[flat_index >= 0], minlength=n_seq).to(logps.dtype)

    # Logging only, matching TRL's metrics: entropy over all scored tokens, top-1 accuracy over chosen tokens
    entropy_sum = top1_sum = None
    if entropy is not None:
        scored = flat_index >= 0
        entropy_sum = entropy[:, -width:].detach().float().reshape(-1)[scored].sum()
    if top1 is not None:
        chosen = (flat_index >= 0) & (flat_index < n_seq // 2)
        top1_sum = top1[:, -width:].reshape(-1)[chosen].float().sum()
    return SequenceLogps(logps=logps, counts=counts, entropy_sum=entropy_sum, top1_sum=top1_sum)
