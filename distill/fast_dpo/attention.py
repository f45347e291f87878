"""Attention for packed preference rows, three backends of the one rule in packing.py: a flex-attention BlockMask
(CUDA), per-document SDPA (any device; the CPU default) and a dense boolean mask for SDPA (any device).

    backend = resolve_backend("auto", device)          # "flex" on CUDA, "docs" otherwise
    use_backend(model, backend)                         # the model's attention implementation must match the mask
    mask = attention_mask(batch["doc_ids"], batch["branch"], backend)
    model(input_ids=..., position_ids=..., attention_mask=mask)

transformers passes a 4D tensor or a BlockMask given as `attention_mask` straight to the attention function
(masking_utils returns it as-is), so no model code changes. Varlen FlashAttention cannot express "the rejected
branch sees the prompt but not the chosen branch" (its documents are contiguous and disjoint), so the GPU path is
flex attention, which skips the masked-out blocks: a row of many short documents costs about the sum of the
documents' attention, not the square of the row.

Flex attention has no backward on the CPU (torch 2.13), and a dense mask makes SDPA attend over the whole row,
documents of other pairs included: its cost is the square of the row. The "docs" backend hand-writes the
block-sparse loop flex attention would do: per document, one causal SDPA call over trunk + chosen branch (PyTorch's
flash kernel on the CPU, no T x T matrix) and one over the rejected branch against trunk + rejected branch (a small
[rejected, trunk + rejected] mask). The "mask" it passes through the model is the documents' layout, a
[1, 1, documents, 5] integer tensor (row, start, trunk, chosen branch, rejected branch lengths); any other mask
(generation with the model afterwards) goes to transformers' own SDPA.
"""

from __future__ import annotations

import torch

from eval.io import DistillError

from .config import ATTENTION_BACKENDS as BACKENDS
from .packing import TRUNK

DOCS_IMPLEMENTATION = "distill_docs"  # the name the "docs" backend registers with transformers


def resolve_backend(requested: str, device: torch.device | str) -> str:
    """'auto' picks flex attention on CUDA and per-document SDPA elsewhere: flex attention has no backward on
    the CPU (torch 2.13)."""
    if requested not in BACKENDS:
        raise DistillError(f"attention_backend must be one of {', '.join(BACKENDS)}, got {requested!r}")
    if requested == "auto":
        return "flex" if torch.device(device).type == "cuda" else "docs"
    return requested


def use_backend(model: torch.nn.Module, backend: str) -> None:
    """Switch the model (a PreTrainedModel, or a PeftModel around one) to the attention implementation that takes
    this backend's mask. Eager attention adds its mask, so a boolean mask would be wrong there: SDPA it is."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if backend == "docs":
        register_docs_attention()
    implementation = {"flex": "flex_attention", "sdpa": "sdpa", "docs": DOCS_IMPLEMENTATION}[backend]
    if base.config._attn_implementation != implementation:
        base.set_attn_implementation(implementation)


def register_docs_attention() -> None:
    """Register the "docs" attention with transformers (idempotent). Its mask function is SDPA's, so the model
    still builds ordinary masks (and attends through SDPA) when called without a document layout."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(DOCS_IMPLEMENTATION, docs_attention)
    AttentionMaskInterface.register(DOCS_IMPLEMENTATION, sdpa_mask)


LAYOUT_FIELDS = 5  # row, start, trunk, chosen branch, rejected branch


def document_layout(doc_ids: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
    """The documents of [rows, T] packed rows as a [1, 1, documents, 5] long tensor of (row, start, trunk length,
    chosen-branch length, rejected-branch length). Each document is trunk, chosen branch, rejected branch, in that
    order and contiguous (packing.layout_pair); padding (document -1) is in no document."""
    ids, br = doc_ids.cpu(), branch.cpu()
    layout = []
    for row in range(ids.shape[0]):
        values, counts = torch.unique_consecutive(ids[row], return_counts=True)
        start = 0
        for doc, n in zip(values.tolist(), counts.tolist(), strict=True):
            if doc >= 0:
                parts = torch.bincount(br[row, start : start + n], minlength=3).tolist()
                layout.append([row, start, *parts[:3]])
            start += n
    return torch.tensor(layout, dtype=torch.long).reshape(1, 1, len(layout), LAYOUT_FIELDS)


def _is_layout(mask) -> bool:
    return isinstance(mask, torch.Tensor) and mask.dtype == torch.long and mask.ndim == 4 and mask.shape[-1] == 5


def docs_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """transformers attention function (query [B, H, T, D], key and value [B, H_kv, T, D]; returns [B, T, H, D])
    that attends document by document as packing.py's rule says."""
    if not _is_layout(attention_mask):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    import torch.nn.functional as F

    gqa = query.shape[1] != key.shape[1]
    p_drop = dropout if module.training else 0.0

    def attend(q, k, v, causal: bool, mask=None):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p_drop, is_causal=causal,
                                              scale=scaling, enable_gqa=gqa)

    batch, heads, width, dim = query.shape
    by_row: list[list[torch.Tensor]] = [[] for _ in range(batch)]
    ends = [0] * batch

    def gap(row: int, until: int) -> None:  # padding between or after documents: zeros, never scored
        if until > ends[row]:
            by_row[row].append(query.new_zeros(1, heads, until - ends[row], dim))
            ends[row] = until

    for row, start, trunk, chosen, rejected in attention_mask.reshape(-1, LAYOUT_FIELDS).tolist():
        gap(row, start)
        q, k, v = query[row : row + 1], key[row : row + 1], value[row : row + 1]
        head = slice(start, start + trunk + chosen)  # trunk and chosen branch: plain causal attention
        by_row[row].append(attend(q[:, :, head], k[:, :, head], v[:, :, head], causal=True))
        if rejected:
            r0 = start + trunk + chosen
            tail = slice(r0, r0 + rejected)
            if trunk:
                # the rejected branch sees the whole trunk and itself causally: causal aligned to the bottom right
                keys = torch.cat([k[:, :, start : start + trunk], k[:, :, tail]], dim=2)
                values = torch.cat([v[:, :, start : start + trunk], v[:, :, tail]], dim=2)
                i = torch.arange(rejected, device=query.device)[:, None]
                j = torch.arange(trunk + rejected, device=query.device)[None, :]
                by_row[row].append(attend(q[:, :, tail], keys, values, causal=False, mask=j <= trunk + i))
            else:
                by_row[row].append(attend(q[:, :, tail], k[:, :, tail], v[:, :, tail], causal=True))
        ends[row] = start + trunk + chosen + rejected
    for row in range(batch):
        gap(row, width)
    out = torch.cat([torch.cat(parts, dim=2) for parts in by_row], dim=0)
    return out.transpose(1, 2).contiguous(), None


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
    if backend == "docs":
        return document_layout(doc_ids, branch).to(doc_ids.device)
    if backend == "sdpa":
        return dense_mask(doc_ids, branch)
    raise DistillError(f"unknown attention backend {backend!r} (resolve 'auto' with resolve_backend first)")
