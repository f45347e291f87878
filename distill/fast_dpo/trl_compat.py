"""The one place where fast DPO touches TRL's internals: every private TRL name the package uses is listed,
imported or read here, and `check_trl()` says by name which one a TRL release no longer has.

    from distill.fast_dpo import trl_compat
    trl_compat.check_trl()                        # DistillError naming e.g. trl.trainer.utils.use_adapter
    trl_compat.check_trainer(trainer)             # after DPOTrainer.__init__: the attributes it set
    with trl_compat.use_adapter(peft_model, None): ...

Fast DPO subclasses TRL's DPOTrainer and reuses what its constructor builds (tokenised data, PEFT set-up, the
fused LM head, the metrics store), so it depends on names TRL does not document as API. They are gathered here so
that a TRL upgrade fails in one place, with a message naming what changed, instead of deep inside a training
step; tests/test_fast_dpo_trl_compat.py runs the checks against the installed TRL. Built against trl 1.16.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
from typing import Any

from eval.io import DistillError

BUILT_AGAINST = "1.16"

# Functions fast DPO imports from TRL modules that TRL does not export: (module, name, what fast DPO needs it for)
FUNCTIONS = (
    ("trl.trainer.utils", "use_adapter", "the reference forward through the disabled or 'ref' adapter"),
    ("trl.models.utils", "disable_gradient_checkpointing", "reference forwards without activation checkpointing"),
    ("trl.trainer.utils", "add_fused_lm_head", "the chunked LM head that scores completion tokens"),
    ("trl.trainer.utils", "selective_log_softmax", "lm_head='full' (the ablation without the fused head)"),
)
# The fused head's contract: a forward keyword and the output fields read from it
FUSED_FORWARD_KEYWORD = "fused_lm_head"
FUSED_OUTPUT_CLASS = ("trl.trainer.utils", "FusedCausalLMOutput")
FUSED_OUTPUT_FIELDS = ("log_probs", "entropy", "is_top1")
# Methods of DPOTrainer that fast DPO overrides (they must exist, or the override is never called) or calls
OVERRIDDEN_METHODS = ("_precompute_ref_logps", "compute_loss", "prediction_step", "get_train_dataloader",
                      "get_eval_dataloader")
# compute_ref_log_probs: benchmarks/dpo_speed.py's correctness check; _prepare_inputs: transformers' Trainer
CALLED_METHODS = ("compute_ref_log_probs", "_prepare_inputs")
# Attributes DPOTrainer.__init__ sets (or transformers' Trainer, for _train_batch_size) that fast DPO reads
TRAINER_ATTRIBUTES = ("_is_vision_dataset", "aux_loss_enabled", "_metrics", "_total_train_tokens", "_tp_size",
                      "_train_batch_size")
# The method of DPOTrainer that fast DPO's constructor must keep from running (see skip_trl_precompute)
PRECOMPUTE_METHOD = "_precompute_ref_logps"


def _trl_version() -> str:
    try:
        import trl

        return trl.__version__
    except Exception:  # noqa: BLE001 - only for the message
        return "unknown"


def _fail(missing: list[str]) -> None:
    raise DistillError(
        f"fast DPO needs TRL internals that trl {_trl_version()} does not have: {'; '.join(missing)}. It was built "
        f"against trl {BUILT_AGAINST}: install trl=={BUILT_AGAINST}.* or train with the stock trainer (fast: false)"
    )


def missing_in_trl() -> list[str]:
    """What the installed TRL lacks of the module-level names above, each as 'module.name (why)'."""
    missing = []
    for module, name, why in FUNCTIONS:
        try:
            found = hasattr(importlib.import_module(module), name)
        except ImportError:
            found = False
        if not found:
            missing.append(f"{module}.{name} ({why})")
    add_head = _function("trl.trainer.utils", "add_fused_lm_head")
    if add_head is not None and "outputs" not in inspect.signature(add_head).parameters:
        missing.append("the 'outputs' parameter of trl.trainer.utils.add_fused_lm_head (entropy and top-1 metrics)")
    module, name = FUSED_OUTPUT_CLASS
    output_cls = _function(module, name)
    if output_cls is None:
        missing.append(f"{module}.{name} (the fused head's output)")
    else:
        fields = {f.name for f in dataclasses.fields(output_cls)} if dataclasses.is_dataclass(output_cls) else set()
        missing += [f"{module}.{name}.{f} (read from the fused head)" for f in FUSED_OUTPUT_FIELDS if f not in fields]
    from trl import DPOTrainer

    for method in OVERRIDDEN_METHODS + CALLED_METHODS:
        if not callable(getattr(DPOTrainer, method, None)):
            missing.append(f"trl.DPOTrainer.{method} (method fast DPO {'calls' if method in CALLED_METHODS else 'overrides'})")
    return missing


def missing_on_trainer(trainer: Any) -> list[str]:
    """The attributes of TRAINER_ATTRIBUTES a constructed DPOTrainer does not have."""
    return [f"DPOTrainer.{a} (set by its constructor)" for a in TRAINER_ATTRIBUTES if not hasattr(trainer, a)]


def check_trl() -> None:
    """DistillError naming every internal the installed TRL lacks; nothing when all are there."""
    missing = missing_in_trl()
    if missing:
        _fail(missing)


def check_trainer(trainer: Any) -> None:
    missing = missing_on_trainer(trainer)
    if missing:
        _fail(missing)


def _function(module: str, name: str):
    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None


def _require(module: str, name: str):
    found = _function(module, name)
    if found is None:
        why = next((w for m, n, w in FUNCTIONS if (m, n) == (module, name)), "")
        _fail([f"{module}.{name} ({why})" if why else f"{module}.{name}"])
    return found


# ---- the functions, under the names fast DPO calls them by ---------------------------------------------------


def use_adapter(model, adapter_name: str | None) -> contextlib.AbstractContextManager:
    """TRL's context manager: `adapter_name` active inside, or every adapter disabled when it is None."""
    return _require("trl.trainer.utils", "use_adapter")(model, adapter_name=adapter_name)


def disable_gradient_checkpointing(model, gradient_checkpointing_kwargs) -> contextlib.AbstractContextManager:
    return _require("trl.models.utils", "disable_gradient_checkpointing")(model, gradient_checkpointing_kwargs)


def add_fused_lm_head(model) -> None:
    _require("trl.trainer.utils", "add_fused_lm_head")(model)


def selective_log_softmax(logits, index):
    return _require("trl.trainer.utils", "selective_log_softmax")(logits, index)


def fused_forward(model, *, labels, **kwargs):
    """(log_probs, entropy, is_top1) per position from a model that carries the fused head: log_probs[r, t - 1]
    scores labels[r, t]. entropy and is_top1 are None when the head was added without them."""
    out = model(**kwargs, labels=labels, **{FUSED_FORWARD_KEYWORD: True})
    return tuple(getattr(out, name) for name in FUSED_OUTPUT_FIELDS)


# ---- the trainer's state -------------------------------------------------------------------------------------


def skip_trl_precompute(cls: type) -> type:
    """Class decorator: DPOTrainer's constructor runs its own padded reference pass when
    precompute_ref_log_probs is set; fast DPO fills its cache instead, so that pass returns the data unchanged."""

    def precompute(self, dataset, name, batch_size):
        return dataset

    precompute.__doc__ = skip_trl_precompute.__doc__
    setattr(cls, PRECOMPUTE_METHOD, precompute)
    return cls


def is_vision_dataset(trainer) -> bool:
    return trainer._is_vision_dataset


def uses_aux_loss(trainer) -> bool:
    return trainer.aux_loss_enabled


def train_batch_size(trainer) -> int:
    """transformers' Trainer keeps the per-step batch size here (auto_find_batch_size may lower it)."""
    return trainer._train_batch_size


def prepare_inputs(trainer, inputs):
    """transformers' Trainer moves a batch to the device (and applies context parallelism) here."""
    return trainer._prepare_inputs(inputs)


def stock_reference_logps(trainer, batch):
    """(chosen, rejected) reference log-probs of a padded stock batch, as DPOTrainer computes them."""
    return trainer.compute_ref_log_probs(trainer.model, batch)


def metrics(trainer, mode: str) -> dict[str, list]:
    """The store DPOTrainer.log() averages and logs: {name: [values since the last log]}."""
    return trainer._metrics[mode]


def add_train_tokens(trainer, gathered_tokens: int) -> int:
    """Count tokens the processes trained on (summed over processes) into TRL's num_tokens the way
    DPOTrainer does (tensor-parallel ranks see the same batch); returns the running total."""
    trainer._total_train_tokens += gathered_tokens // trainer._tp_size
    return trainer._total_train_tokens


def train_tokens(trainer) -> int:
    return trainer._total_train_tokens
