"""The one place that decides quantization, LoRA and device for a student, from a recipe's `ModelConfig`.

    quant = build_quantization_config(recipe.model, use_cpu=True)   # BitsAndBytesConfig or None; no weights
    lora = build_lora_config(recipe.model)                          # peft.LoraConfig on all linear layers
    model, peft_config = load_student(recipe.model, recipe.training, init_adapter=None)

QLoRA as in the paper: NF4 weights, double quantisation, bf16 compute on GPU, LoRA on every linear layer.
The same code runs on CPU (bitsandbytes 0.50 has CPU 4-bit kernels) with float32 compute, so tests exercise the
path GPU runs take.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from eval.io import DistillError

logger = logging.getLogger(__name__)


def on_cpu(training_args) -> bool:
    import torch

    return bool(training_args.use_cpu) or not torch.cuda.is_available()


def _env_true(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("1", "true", "yes")


def sharded(training_args) -> bool:
    """True under FSDP or DeepSpeed (set by `accelerate launch --config_file ...` or the training args):
    then the launcher places the weights, and each process must not pin the whole model to its GPU."""
    return (
        bool(training_args.fsdp or training_args.deepspeed)
        or _env_true("ACCELERATE_USE_FSDP")
        or _env_true("ACCELERATE_USE_DEEPSPEED")
    )


def fsdp_enabled(training_args) -> bool:
    return bool(training_args.fsdp) or _env_true("ACCELERATE_USE_FSDP")


def device_map_for(training_args) -> Any:
    """Where the weights load: nowhere yet under DeepSpeed ZeRO-3 (it partitions the weights as they load and
    refuses any device_map, on the CPU too); the CPU; nowhere yet under FSDP/DeepSpeed; else this process's own GPU
    (one whole copy per process for DDP; "auto" would split one model over every visible GPU)."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():
        return None
    if on_cpu(training_args):
        return "cpu"
    if sharded(training_args):
        return None
    return {"": training_args.local_process_index}


def _torch_dtype(name: str | None):
    import torch

    if name in (None, "auto"):
        return name
    return getattr(torch, name)


def build_quantization_config(model_args, *, use_cpu: bool = False):
    """TRL's BitsAndBytesConfig for the recipe (`load_in_4bit`, `bnb_4bit_quant_type`, `use_bnb_nested_quant`,
    `bnb_4bit_quant_storage`, compute dtype = `dtype`), adjusted for CPU: bitsandbytes computes in float32 there
    (its bf16 CPU path repacks weights during eval and breaks the next training step), and the packed storage
    dtype only matters to FSDP."""
    import torch
    from trl import get_quantization_config

    quant = get_quantization_config(model_args)
    if quant is not None and quant.load_in_4bit and use_cpu:
        quant.bnb_4bit_compute_dtype = torch.float32
        quant.bnb_4bit_quant_storage = torch.uint8
    return quant


def build_lora_config(model_args):
    """TRL's LoraConfig for the recipe; LoRA goes on every linear layer unless the recipe names modules."""
    from trl import get_peft_config

    targets = model_args.lora_target_modules
    # peft only recognises the shorthand as a plain string; YAML lists and the CLI's nargs give ['all-linear'].
    if targets is None or targets == ["all-linear"]:
        model_args.lora_target_modules = "all-linear"
    return get_peft_config(model_args)


def _disable_avx512bf16(model) -> None:
    # On CPUs with AVX512-BF16, bitsandbytes repacks 4-bit weights in a no-grad eval forward (evaluation, DPO's
    # reference pass), and the next training forward then fails with an in-place error on a leaf (bitsandbytes 0.50).
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def load_student(model_args, training_args, *, init_adapter: str | None = None):
    """Load the base (4-bit when the recipe says so) where `device_map_for` decides; with `init_adapter`,
    wrap it in that trainable LoRA adapter. Returns (model, peft_config): peft_config is the LoraConfig for the
    trainer to apply, or None when the model already carries its adapter."""
    from transformers import AutoModelForCausalLM

    cpu = on_cpu(training_args)
    quant = build_quantization_config(model_args, use_cpu=cpu)
    if quant is not None and quant.load_in_4bit and fsdp_enabled(training_args):
        storage, dtype = str(quant.bnb_4bit_quant_storage), str(_torch_dtype(model_args.dtype))
        if storage != dtype:
            # FSDP flattens every parameter of a unit into one tensor of one dtype.
            raise DistillError(
                f"bnb_4bit_quant_storage must equal dtype under FSDP (got {storage} and {dtype}): set "
                "bnb_4bit_quant_storage: bfloat16 in the recipe"
            )
    kwargs = dict(
        revision=model_args.model_revision,
        dtype=_torch_dtype(model_args.dtype),
        attn_implementation=model_args.attn_implementation,
        trust_remote_code=training_args.trust_remote_code,
        device_map=device_map_for(training_args),
        quantization_config=quant,
    )
    if training_args.model_init_kwargs:
        kwargs.update(training_args.model_init_kwargs)
        training_args.model_init_kwargs = None  # consumed here; the trainer receives a model object
    from data_gen.local_models import resolve_model

    # A .gguf file or pkg: name loads from its converted folder; the recipe (and run.json) keep the name.
    path = resolve_model(model_args.model_name_or_path)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as e:
        raise DistillError(
            f"model_name_or_path: cannot load {model_args.model_name_or_path!r}: {e}"
        ) from None
    if cpu and quant is not None and quant.load_in_4bit:
        _disable_avx512bf16(model)

    if init_adapter is None:
        return model, build_lora_config(model_args)

    from peft import PeftModel

    config_path = Path(init_adapter) / "adapter_config.json"
    if not config_path.is_file():
        raise DistillError(
            f"init_adapter: {init_adapter} holds no adapter_config.json (train the SFT stage first)"
        )
    base = json.loads(config_path.read_text()).get("base_model_name_or_path")
    if base and base not in (model_args.model_name_or_path, path):  # peft records the folder it loaded
        logger.warning(
            "init_adapter %s was trained on %s, this recipe loads %s",
            init_adapter,
            base,
            model_args.model_name_or_path,
        )
    model = PeftModel.from_pretrained(model, init_adapter, is_trainable=True)
    return model, None
