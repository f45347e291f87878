"""`distill merge CHECKPOINT --out DIR`: fold a LoRA adapter into a bf16 copy of its base model.

    distill merge checkpoints/qwen2.5-0.5b-instruct-dpo --out merged/qwen2.5-0.5b-fc
    distill merge some/adapter --model Qwen/Qwen2.5-0.5B-Instruct --base-4bit --out merged/x   # no run.json

A QLoRA adapter learned to correct the 4-bit base, W_q = dequant(quant(W)), not the original W. Merging it into
W (the usual `from_pretrained(base) + merge_and_unload()`) gives a model that differs from the one that was
trained and evaluated. So when the run trained on a 4-bit base, the base is loaded 4-bit with the run's own
quantization settings (from run.json), dequantised, and only then merged. The result is written to a temporary
folder beside --out and renamed into place, with the tokenizer (and chat template) the run trained with and a
merge.json saying how it was made.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from eval.io import DistillError, atomic_folder, write_json

logger = logging.getLogger(__name__)


def merge(
    checkpoint: str | Path,
    out: str | Path,
    *,
    base: str | None = None,
    base_4bit: bool = False,
    dtype: str = "bfloat16",
    device: str = "cpu",
    overwrite: bool = False,
) -> Path:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import ModelConfig

    from data_gen.local_models import adapter_base_model, resolve_model, run_record
    from distill.modeling import build_quantization_config

    ckpt, out = Path(checkpoint), Path(out)
    if not (ckpt / "adapter_config.json").is_file():
        raise DistillError(
            f"{ckpt}: no adapter_config.json (expected a training run folder or a LoRA adapter)"
        )
    if out.exists() and not overwrite:
        raise DistillError(f"--out {out} exists; pass --overwrite to replace it")
    run = run_record(ckpt)  # the run's record, also for a checkpoint-<step> inside its run folder
    model_cfg = (run or {}).get("config", {}).get("model", {})
    base = base or adapter_base_model(ckpt)
    if not base:
        raise DistillError(f"{ckpt}: no run.json or adapter base model; pass --model")
    base = resolve_model(base)  # a .gguf file or pkg: name (as run.json records it) -> its converted folder
    trained_4bit = bool(model_cfg.get("load_in_4bit")) if run else base_4bit
    target = getattr(torch, dtype)
    revision = model_cfg.get("model_revision") or "main"
    trust = bool((run or {}).get("config", {}).get("training", {}).get("trust_remote_code", False))

    if trained_4bit:
        # The run's own quantization settings (quant type, double quantisation), so dequantising reproduces the
        # exact W_q the adapter trained against; compute dtype and storage do not change the stored codes.
        known = {k: v for k, v in model_cfg.items() if k in ModelConfig.__dataclass_fields__}
        cfg = ModelConfig(**{**known, "model_name_or_path": base, "load_in_4bit": True, "dtype": dtype})
        if not run:
            cfg.bnb_4bit_quant_type, cfg.use_bnb_nested_quant = "nf4", True
        quant = build_quantization_config(cfg, use_cpu=device == "cpu")
        model = AutoModelForCausalLM.from_pretrained(
            base,
            revision=revision,
            quantization_config=quant,
            device_map=device,
            dtype=target,
            trust_remote_code=trust,
        )
        model = model.dequantize(dtype=target)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            base, revision=revision, device_map=device, dtype=target, trust_remote_code=trust
        )
    model = PeftModel.from_pretrained(model, str(ckpt)).merge_and_unload()
    model = model.to(target)
    tokenizer = AutoTokenizer.from_pretrained(str(ckpt), trust_remote_code=trust)

    with atomic_folder(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(
            tmp / "merge.json",
            {
                "base": base,
                "adapter": str(ckpt),
                "dtype": dtype,
                "dequantized_from_4bit": trained_4bit,
                "run": run,
            },
        )
    logger.info(
        "merged %s into %s (%s%s) -> %s",
        ckpt,
        base,
        dtype,
        ", dequantised from 4-bit" if trained_4bit else "",
        out,
    )
    return out


def merge_cli(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = merge(
        args.checkpoint,
        args.out,
        base=args.base,
        base_4bit=args.base_4bit,
        dtype=args.dtype,
        device=args.device,
        overwrite=args.overwrite,
    )
    print(out)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "merge",
        help="merge a trained LoRA adapter into a bf16 copy of its base model",
        description="Fold a run's LoRA adapter into its base model and save a standalone model. A run trained on "
        "a 4-bit base (QLoRA) is merged into the dequantised 4-bit weights it trained against, not the original "
        "ones, so the merged model computes what the adapter did. Written atomically, with the run's tokenizer "
        "and a merge.json.",
    )
    p.add_argument("checkpoint", help="a training run folder (checkpoints/<run>) or a folder holding a LoRA adapter")
    p.add_argument("--out", required=True, help="folder for the merged model (must not exist unless --overwrite)")
    p.add_argument("--model", "--base", dest="base", default=None,
                   help="base model: Hub id, local folder, .gguf file or pkg:NAME (default: model_name_or_path in "
                   "run.json); --base is the older spelling")
    p.add_argument(
        "--base-4bit",
        action="store_true",
        help="only without run.json: the adapter was trained on an NF4 4-bit base with double quantisation",
    )
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                   help="dtype of the merged weights (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="where to load and merge: cpu or cuda[:N] (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(run=merge_cli)
