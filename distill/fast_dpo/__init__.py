"""Fast DPO for tool-calling preference data (issue 8): the shared prompt computed once per pair, pairs packed
without padding, reference log-probs cached on disk, the LM head only on completion tokens; the same loss as TRL's
DPOTrainer.

    from distill.fast_dpo import FastDPOConfig, FastDPOTrainer
    trainer = FastDPOTrainer(model, args=FastDPOConfig(output_dir="out", fast=True), train_dataset=ds,
                             processing_class=tokenizer, peft_config=lora)

Modules: packing (layout and packs), attention (masks per backend), logps (per-sequence log-probs), losses
(TRL's loss formulas on log-probs), ref_cache (reference log-probs on disk), trainer (the DPOTrainer subclass).
"""

from .losses import SUPPORTED_LOSS_TYPES, preference_loss
from .trainer import FastDPOConfig, FastDPOTrainer

__all__ = ["SUPPORTED_LOSS_TYPES", "FastDPOConfig", "FastDPOTrainer", "preference_loss"]
