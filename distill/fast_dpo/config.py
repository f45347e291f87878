"""The fast DPO settings, importable without torch or TRL: a recipe's `fast: true` keys are read, listed and
checked here, and the torch-heavy trainer is imported only when a run starts.

    from distill.fast_dpo.config import FAST_DPO_FIELDS, check_fast_settings    # no torch, no TRL
    from distill.fast_dpo.config import FastDPOConfig   # TRL's DPOConfig plus these fields (imports TRL here)
    args = FastDPOConfig(output_dir="out", fast=True, pack_tokens=8192, max_length=2048)

`FastDPOConfig` is TRL's `DPOConfig` with the fields of `FastDPOFields` appended, so every DPO recipe parses the
same with or without them. Subclassing DPOConfig means importing TRL (and torch, through transformers'
TrainingArguments), so the class is built on first access through the module's `__getattr__`; importing this
module costs only the dataclass below.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from eval.io import DistillError

if TYPE_CHECKING:  # the real class, for type checkers; built lazily at run time
    from trl import DPOConfig

    class FastDPOConfig(DPOConfig):  # noqa: D101
        fast: bool
        pack_tokens: int
        packing: bool
        share_prompt: bool
        cache_ref_logps: bool
        ref_cache_dir: str | None
        attention_backend: str
        lm_head: str


SUPPORTED_LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust", "sft")
ATTENTION_BACKENDS = ("auto", "flex", "docs", "sdpa")
LM_HEADS = ("auto", "fused", "selected", "full")


@dataclass
class FastDPOFields:
    """What fast DPO adds to TRL's DPOConfig. The DPO fields keep their meaning; `per_device_train_batch_size`
    is used only with packing=False."""

    fast: bool = field(
        default=False,
        metadata={"help": "Train with FastDPOTrainer (distill.fast_dpo) instead of TRL's DPOTrainer: same loss, "
                  "prompt computed once per pair, packed rows, cached reference log-probs."},
    )
    pack_tokens: int = field(
        default=8192,
        metadata={"help": "Tokens per pack, i.e. per optimizer step and device (a pair costs prompt + chosen + "
                  "rejected + 1 tokens). Every pair must fit. On the CPU (dense attention) peak memory grows "
                  "with it; on CUDA (flex attention) far less."},
    )
    packing: bool = field(
        default=True,
        metadata={"help": "Pack pairs into rows of pack_tokens. False: per_device_train_batch_size pairs per "
                  "step, one per row, padded to the longest (an ablation)."},
    )
    share_prompt: bool = field(
        default=True,
        metadata={"help": "Compute the prompt once for chosen and rejected. False: prompt + chosen and prompt + "
                  "rejected as separate sequences (an ablation)."},
    )
    cache_ref_logps: bool = field(
        default=True,
        metadata={"help": "Compute reference log-probs once before training and keep them on disk. False: a "
                  "reference forward every step, as stock DPO does (an ablation). precompute_ref_log_probs=True "
                  "means the same as this."},
    )
    ref_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Folder of cached reference log-probs; default $DISTILL_CACHE/ref_logps, else "
                  "~/.cache/distill/ref_logps. Entries are keyed by model, reference adapter, data and "
                  "max_length, so one folder serves every run."},
    )
    attention_backend: str = field(
        default="auto",
        metadata={"help": "'flex' (flex attention, block-sparse; CUDA), 'docs' (SDPA document by document; any "
                  "device), 'sdpa' (one dense boolean mask per row; any device, an ablation) or 'auto' (flex on "
                  "CUDA, docs elsewhere)."},
    )
    lm_head: str = field(
        default="auto",
        metadata={"help": "'fused': TRL's chunked LM head (on CUDA it projects completion positions only, "
                  "elsewhere every position, in tiles). 'selected': the model's own head on the completion "
                  "positions only (logits_to_keep). 'full': logits at every position (an ablation). 'auto': fused "
                  "on CUDA, selected elsewhere."},
    )


FAST_DPO_FIELDS = tuple(f.name for f in dataclasses.fields(FastDPOFields))


def check_loss_config(loss_types, loss_weights, label_smoothing: float) -> None:
    unsupported = [t for t in loss_types if t not in SUPPORTED_LOSS_TYPES]
    if unsupported:
        raise DistillError(
            f"fast DPO supports loss_type {', '.join(SUPPORTED_LOSS_TYPES)}; got {', '.join(unsupported)} "
            "(use the stock trainer for it)"
        )
    if loss_weights is not None and len(loss_weights) != len(loss_types):
        raise DistillError(f"{len(loss_weights)} loss_weights for {len(loss_types)} loss types")
    if "robust" in loss_types and not 0.0 <= label_smoothing < 0.5:
        raise DistillError(f"label_smoothing must lie in [0, 0.5) for the robust loss, got {label_smoothing}")


def check_fast_settings(args: Any) -> None:
    """Refuse, with a DistillError naming the key, what fast DPO does not implement. `args` is a FastDPOConfig
    or anything with its attributes (DPOConfig's names); pure Python, so a recipe can be checked before any
    model loads."""
    loss_types = args.loss_type if isinstance(args.loss_type, (list, tuple)) else [args.loss_type]
    check_loss_config(loss_types, args.loss_weights, args.label_smoothing)
    refused = {
        "ld_alpha": args.ld_alpha is not None,
        "use_weighting": args.use_weighting,
        "f_divergence_type": args.f_divergence_type != "reverse_kl",
        "sync_ref_model": args.sync_ref_model,
        "truncation_mode": args.truncation_mode != "keep_start",
    }
    bad = [name for name, is_set in refused.items() if is_set]
    if bad:
        raise DistillError(f"fast DPO does not implement {', '.join(bad)}; use the stock trainer")
    if args.pack_tokens < 2:
        raise DistillError(f"pack_tokens must be at least 2, got {args.pack_tokens}")
    if args.lm_head not in LM_HEADS:
        raise DistillError(f"lm_head must be one of {', '.join(LM_HEADS)}, got {args.lm_head!r}")
    if args.attention_backend not in ATTENTION_BACKENDS:
        raise DistillError(
            f"attention_backend must be one of {', '.join(ATTENTION_BACKENDS)}, got {args.attention_backend!r}"
        )
    if args.precompute_ref_log_probs and not args.cache_ref_logps:
        raise DistillError("precompute_ref_log_probs=True contradicts cache_ref_logps=False")


@functools.cache
def _fast_dpo_config_class() -> type:
    from trl import DPOConfig

    # FastDPOFields first in the bases so that its fields come after DPOConfig's (dataclasses collect fields
    # from the last base to the first); DPOConfig's __post_init__ still runs.
    @dataclass
    class FastDPOConfig(FastDPOFields, DPOConfig):
        """TRL's DPOConfig plus fast DPO's settings (distill.fast_dpo.config.FastDPOFields)."""

        def __post_init__(self):
            super().__post_init__()
            if self.fast:  # a `fast: true` recipe fails when parsed, not after the model has loaded
                check_fast_settings(self)

    # pickles (the Trainer's training_args.bin) find the class through the module's __getattr__ below
    FastDPOConfig.__module__, FastDPOConfig.__qualname__ = __name__, "FastDPOConfig"
    return FastDPOConfig


def __getattr__(name: str):
    if name == "FastDPOConfig":
        cls = _fast_dpo_config_class()
        globals()["FastDPOConfig"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
