"""Attention masks for packed preference rows: a flex-attention BlockMask on CUDA, a dense boolean mask for SDPA
elsewhere, both from the one rule in packing.py.

    backend = resolve_backend("auto", device)          # "flex" on CUDA, "sdpa" otherwise
    use_backend(model, backend)                         # the model's attention implementation must match the mask
    mask = attention_mask(batch["doc_ids"], batch["branch"], backend)
    model(input_ids=..., position_ids=..., attention_mask=mask)

transformers passes a 4D tensor or a BlockMask given as `attention_mask` straight to the attention function
(masking_utils returns it as-is), so no model code changes. Varlen FlashAttention cannot express "the rejected
branch sees the prompt but not the chosen branch" (its documents are contiguous and disjoint), so the GPU path is
flex attention, which skips the masked-out blocks: a row of many short documents costs about the sum of the
documents' attention, not the square of the row.
"""

from __future__ import annotations

import torch

from eval.io import DistillError

from .config import ATTENTION_BACKENDS as BACKENDS
from .packing import TRUNK


def resolve_backend(requested: str, device: torch.device | str) -> str:
    """'auto' picks flex attention on CUDA and masked SDPA elsewhere: flex attention has no backward on CPU
    (torch 2.13), and compiling it there costs more than it saves on small models."""
    if requested not in BACKENDS:
        raise DistillError(f"attention_backend must be one of {', '.join(BACKENDS)}, got {requested!r}")
    if requested == "auto":
        return "flex" if torch.device(device).type == "cuda" else "sdpa"
    return requested


def use_backend(model: torch.nn.Module, backend: str) -> None:
    """Switch the model (a PreTrainedModel, or a PeftModel around one) to the attention implementation that takes
    this backend's mask. Eager attention adds its mask, so a boolean mask would be wrong there: SDPA it is."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    implementation = {"flex": "flex_attention", "sdpa": "sdpa"}[backend]
    if base.config._attn_implementation != implementation:
        base.set_attn_implementation(implementation)


def mask_mod_for(doc_ids: torch.Tensor, branch: torch.Tensor):
    """The attention rule as a flex-attention mask_mod over [rows, T] document and branch ids."""

    def mask_mod(b, h, q, kv):
        same_doc = doc_ids[b, q] == doc_ids[b, kv]
        visible = (branch[b, kv] == TRUNK) | (branch[b, kv] == branch[b, q])
        return same_doc & (kv <= q) & visible

    return mask_mod


def dense_mask(doc_ids: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
    """The same rule as a [rows, 1, T, T] boolean mask (True = attend), the form SDPA takes. Memory is T^2 bytes
    per row, fine for the CPU path and for rows of a few thousand tokens."""
    t = doc_ids.shape[1]
    positions = torch.arange(t, device=doc_ids.device)
    causal = positions[:, None] >= positions[None, :]
    same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]
    visible = (branch[:, None, :] == TRUNK) | (branch[:, :, None] == branch[:, None, :])
    return (same_doc & causal & visible).unsqueeze(1)


def block_mask(doc_ids: torch.Tensor, branch: torch.Tensor):
    """The rule as a flex-attention BlockMask, built on the ids' device. Rows are the BlockMask's batch
    dimension; heads share the mask."""
    from torch.nn.attention.flex_attention import create_block_mask

    rows, t = doc_ids.shape
    return create_block_mask(mask_mod_for(doc_ids, branch), B=rows, H=None, Q_LEN=t, KV_LEN=t, device=doc_ids.device)


def attention_mask(doc_ids: torch.Tensor, branch: torch.Tensor, backend: str):
    if backend == "flex":
        return block_mask(doc_ids, branch)
    if backend == "sdpa":
        return dense_mask(doc_ids, branch)
    raise DistillError(f"unknown attention backend {backend!r} (resolve 'auto' with resolve_backend first)")
