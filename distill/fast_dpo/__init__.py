"""Fast DPO for tool-calling preference data: the shared prompt computed once per pair, pairs packed without
padding, reference log-probs cached on disk, the LM head only on completion tokens; the same loss as TRL's
DPOTrainer.

    from distill.fast_dpo import FastDPOConfig, FastDPOTrainer
    trainer = FastDPOTrainer(model, args=FastDPOConfig(output_dir="out", fast=True), train_dataset=ds,
                             processing_class=tokenizer, peft_config=lora)

Modules: config (the settings; imports no torch), packing (layout and packs), attention (masks per backend),
logps (per-sequence log-probs), losses (TRL's loss formulas on log-probs), ref_cache (reference log-probs on
disk), trl_compat (every TRL internal the package relies on), trainer (the DPOTrainer subclass).

Importing this package loads no torch: each name below is imported from its module on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import SUPPORTED_LOSS_TYPES, FastDPOConfig
    from .losses import preference_loss
    from .trainer import FastDPOTrainer

_WHERE = {
    "FastDPOConfig": "config",
    "SUPPORTED_LOSS_TYPES": "config",
    "preference_loss": "losses",
    "FastDPOTrainer": "trainer",
}
__all__ = ["SUPPORTED_LOSS_TYPES", "FastDPOConfig", "FastDPOTrainer", "preference_loss"]


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
