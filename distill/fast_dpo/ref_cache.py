"""Reference log-probs computed once and kept on disk, keyed by everything they depend on.

    parts = {"model": model_fp, "adapter": adapter_fp, "data": data_fingerprint(pairs), "max_length": 1024,
             "compute": "bf16/flex"}
    chosen, rejected = load_or_compute(cache_dir, parts, n=len(pairs), compute=lambda: ...)

The key is a SHA-256 of the parts; a different model, reference adapter, tokenized data or max length gives a
different file, so a stale entry is never read (it is just left behind). The file carries its parts as metadata
and is checked against them and against the pair count on load, so a copied or truncated file is recomputed
rather than trusted. Files are safetensors, written atomically.

Why not TRL's precompute_ref_log_probs: it caches through the `datasets` fingerprint of the dataset object,
which changes with unrelated map calls and does not include max_length, and it computes with the padded,
prompt-twice layout this package exists to avoid.
"""

from __future__ import annotations

import hashlib
import json
import struct
from array import array
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from eval.io import DistillError, atomic_write

FORMAT = "distill-ref-logps-v1"


def _hash_tensors(items: Iterable[tuple[str, torch.Tensor]]) -> str:
    h = hashlib.sha256()
    for name, tensor in items:
        t = tensor.detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        # Raw bytes, whatever the dtype (bf16 and 4-bit packed weights have no numpy equivalent)
        h.update(t.contiguous().reshape(-1).view(torch.uint8).cpu().numpy())
    return h.hexdigest()


def _config_json(config) -> str:
    """The architecture as JSON without where it was loaded from: moving a model folder keeps its cache."""
    d = config.to_dict()
    for volatile in ("_name_or_path", "transformers_version", "_commit_hash"):
        d.pop(volatile, None)
    return json.dumps(d, sort_keys=True, default=str)


def reference_fingerprint(
    model: torch.nn.Module, *, ref_model: torch.nn.Module | None = None, ref_adapter: str | None = None
) -> dict[str, str]:
    """{"model": ..., "adapter": ...} for the reference the trainer uses: `ref_model` when given; otherwise the
    policy's base weights (every PEFT adapter left out) plus, when the reference is a named adapter (TRL's "ref"
    copy of an SFT adapter), that adapter's weights. Hashes the full weights: about a second per GB, once per
    run, which is what makes a changed checkpoint invalidate the cache."""
    if ref_model is not None:
        ref_model = getattr(ref_model, "module", ref_model)
        state = ref_model.state_dict()
        return {"model": _hash_tensors(sorted(state.items())) + ":" + _hash_config(ref_model), "adapter": "none"}
    model = getattr(model, "module", model)
    state = model.state_dict()
    adapters = set(getattr(model, "peft_config", {}) or {})
    if not adapters:
        return {"model": _hash_tensors(sorted(state.items())) + ":" + _hash_config(model), "adapter": "none"}

    def owner(key: str) -> str | None:
        return next((a for a in adapters if f".{a}." in key or key.endswith(f".{a}")), None)

    base = sorted((k, v) for k, v in state.items() if owner(k) is None)
    fingerprint = {"model": _hash_tensors(base) + ":" + _hash_config(model), "adapter": "disabled"}
    if ref_adapter is not None:
        if ref_adapter not in adapters:
            raise DistillError(f"reference adapter {ref_adapter!r} is not among the model's adapters {sorted(adapters)}")
        fingerprint["adapter"] = _hash_tensors(sorted((k, v) for k, v in state.items() if owner(k) == ref_adapter))
    return fingerprint


def _hash_config(model: torch.nn.Module) -> str:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return hashlib.sha256(_config_json(base.config).encode()).hexdigest()[:16]


def data_fingerprint(pairs: Iterable) -> str:
    """SHA-256 of the token ids of every pair, in order (objects with prompt_ids, chosen_ids, rejected_ids).
    Token ids rather than text, so a changed tokenizer or chat template counts as changed data."""
    h = hashlib.sha256()
    n = 0
    for pair in pairs:
        for ids in (pair.prompt_ids, pair.chosen_ids, pair.rejected_ids):
            h.update(struct.pack("<I", len(ids)))
            h.update(array("q", ids).tobytes())
        n += 1
    return f"{n}:{h.hexdigest()}"


def cache_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps({"format": FORMAT, **parts}, sort_keys=True).encode()).hexdigest()[:32]


def cache_path(cache_dir: str | Path, parts: dict) -> Path:
    return Path(cache_dir) / f"ref_logps-{cache_key(parts)}.safetensors"


def load(cache_dir: str | Path, parts: dict, n: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The cached (chosen, rejected) log-probs, or None when there is no valid entry for these parts."""
    from safetensors import safe_open

    path = cache_path(cache_dir, parts)
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            stored = json.loads((f.metadata() or {}).get("parts", "null"))
            chosen, rejected = f.get_tensor("chosen"), f.get_tensor("rejected")
    except Exception:  # a torn or foreign file: recompute and overwrite it
        return None
    expected = json.loads(json.dumps(parts, sort_keys=True))
    if stored != expected or chosen.shape != (n,) or rejected.shape != (n,):
        return None
    return chosen, rejected


def save(cache_dir: str | Path, parts: dict, chosen: torch.Tensor, rejected: torch.Tensor) -> Path:
    from safetensors.torch import save

    path = cache_path(cache_dir, parts)
    data = save(
        {"chosen": chosen.detach().float().cpu().contiguous(), "rejected": rejected.detach().float().cpu().contiguous()},
        metadata={"format": FORMAT, "parts": json.dumps(parts, sort_keys=True)},
    )
    with atomic_write(path, "wb") as f:
        f.write(data)
    return path


def load_or_compute(
    cache_dir: str | Path, parts: dict, n: int, compute: Callable[[], tuple[torch.Tensor, torch.Tensor]]
) -> tuple[tuple[torch.Tensor, torch.Tensor], bool]:
    """((chosen, rejected), hit): from the cache when a valid entry exists, else from `compute()`, then stored."""
    cached = load(cache_dir, parts, n)
    if cached is not None:
        return cached, True
    chosen, rejected = compute()
    if chosen.shape != (n,) or rejected.shape != (n,):
        raise DistillError(f"reference computation returned {tuple(chosen.shape)} log-probs for {n} pairs")
    save(cache_dir, parts, chosen, rejected)
    return (chosen.detach().float().cpu(), rejected.detach().float().cpu()), False
