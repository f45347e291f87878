"""Fast DPO (distill.fast_dpo) against stock TRL 1.16 DPOTrainer: tokens/s and peak memory, same model, same
LoRA settings, same pairs.

    python benchmarks/dpo_speed.py --student              # CPU: SmolLM2-135M-Instruct on real BFCL pairs (~15 min, 2 cores)
    python benchmarks/dpo_speed.py --models 1.5b --max-minutes 7    # one GPU: the 1.5B shape, every config (~8 min)
    python benchmarks/dpo_speed.py --tiny                 # CPU rehearsal of the GPU run: tiny shape, a few minutes

Results go to --out (default benchmarks/results) as dpo_speed-<date>-<cpu|gpu>.json and .md, rewritten after every
run, so a killed run leaves what it measured ({"runs": [{"model", "config", "tokens_per_s", "peak_rss_gib" (CPU)
or "peak_gib" (GPU), ...}]}). The --tiny rehearsal writes only when --out is given, as dpo_speed-<date>-tiny.*.

--student (CPU). The packaged student (pkg:smollm2-135m-instruct, Hermes tool template) in float32, LoRA r16
alpha 32 on all linear layers, no gradient checkpointing, max_length 2048, learning rate 5e-6, beta 0.1. Pairs are
real: `distill import bfcl` of live_simple, live_multiple and live_irrelevance (--limit per category), then
`distill pairs --chosen-from gold --synthetic 2` (chosen: the tasks' verified answers; rejected: synthetic hard
negatives, as `distill demo` makes them without a teacher), --pairs of them drawn with --seed. Each trainer runs one
epoch over the same pairs in its own child process: stock with --batch-size pairs per forward, --grad-accum
forwards per optimizer step and a reference forward every step (TRL's default), fast with packs of --pack-tokens and its reference log-probs computed once
before training (ref_s). tokens/s counts what the pairs stand for, prompt + chosen plus prompt + rejected (TRL's
num_tokens), over the whole epoch, so both rates divide the same work; e2e tok/s charges fast's reference pass
too. peak RSS is the child's maximum resident set size (os.wait4's ru_maxrss), model loading and tokenising
included; rss@train is the maximum reached before the first step.

GPU (default without --tiny/--student; needs CUDA). On a bare CUDA machine (Python 3.12 with torch, transformers,
peft, accelerate; no trl, bitsandbytes or datasets) carry those as wheels, as benchmarks/train_gpu.py describes:
    pip download -d .whl "trl==1.16.*" datasets bitsandbytes ...     # beforehand, where pip works
    python3 -m pip install -q --no-index --no-deps --target .site .whl/*.whl
    PYTHONPATH=$PWD/.site:$PWD python3 benchmarks/dpo_speed.py --models 1.5b --max-minutes 7
Order: a correctness check (fast vs stock loss and reference log-probs on one batch, random LoRA weights so the
loss is not log 2), then stock, fast and stock-precompute (TRL's own precompute_ref_log_probs) per model shape,
then the ablations on the last shape, each one part of the fast path switched off or swapped:
  fast-no-refcache  a reference forward every step instead of the cached log-probs
  fast-no-share     prompt + chosen and prompt + rejected as separate sequences (no prefix sharing)
  fast-no-pack      --batch-size pairs per step, one per row, padded to the longest (no packing)
  fast-full-head    logits at every position instead of the fused head on completion tokens
  fast-sdpa         one dense-mask SDPA call per row instead of block-sparse flex attention
  fast-docs         SDPA document by document (the CPU default) instead of flex attention
  fast-selected-head  the model's own head on completion positions (the CPU default) instead of TRL's fused one
Runs that would start after --max-minutes are skipped (and listed). Models are random-initialised Qwen2.5 shapes
(no hub), saved once in bf16 and loaded in 4-bit: nf4, double quantisation, bf16 compute; LoRA r16 on all linear
layers; gradient checkpointing; bf16. Data: prompts of 200-700 tokens, completions of 20-120, shaped like tool
schemas plus a question against a tool call. Steady state: warm-up steps (compilation, allocator) are left out;
the fast path's one-off reference pass is reported on its own (ref_s) and in an end-to-end rate (e2e tok/s).
peak GiB is torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from distill.fast_dpo import trl_compat  # noqa: E402

# Qwen2.5-0.5B and -1.5B as published (config.json of the Qwen/Qwen2.5-*-Instruct repos), weights random.
QWEN25 = {
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),
}
ABLATIONS = {
    "fast-no-refcache": dict(cache_ref_logps=False),
    "fast-no-share": dict(share_prompt=False),
    "fast-no-pack": dict(packing=False),
    "fast-full-head": dict(lm_head="full"),
    "fast-sdpa": dict(attention_backend="sdpa"),
    "fast-docs": dict(attention_backend="docs"),
    "fast-selected-head": dict(lm_head="selected"),
    "fast-fused-head": dict(lm_head="fused"),
}
ALL_CONFIGS = ["stock", "fast", "stock-precompute", *ABLATIONS]
GPU_CONFIGS = [c for c in ALL_CONFIGS if c != "fast-fused-head"]  # fused is the CUDA default already
WORDS = 2000  # word-level vocabulary of the synthetic tokenizer
STUDENT = "pkg:smollm2-135m-instruct"
STUDENT_CATEGORIES = "live_simple,live_multiple,live_irrelevance"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--tiny", action="store_true", help="CPU rehearsal of the GPU run: tiny model, no 4-bit")
    mode.add_argument("--student", action="store_true",
                      help="CPU: the packaged SmolLM2-135M-Instruct on real BFCL pairs, each trainer in a child process")
    p.add_argument("--models", default=None, help="GPU: comma list of 0.5b,1.5b (default both; tiny with --tiny)")
    p.add_argument("--configs", default=None,
                   help=f"comma list of {','.join(ALL_CONFIGS)} (default: all but fast-fused-head on the GPU and "
                   "with --tiny; stock,fast with --student)")
    p.add_argument("--ablate-on", default=None, help="GPU: model shape for the ablations (default: the last one)")
    p.add_argument("--steps", type=int, default=None, help="GPU/--tiny: timed steps per run (default 6; 3 with --tiny)")
    p.add_argument("--warmup", type=int, default=None, help="GPU/--tiny: untimed steps first (default 2; 1 with --tiny)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="pairs per forward of the stock trainer (default 8; 2 with --student)")
    p.add_argument("--grad-accum", type=int, default=None,
                   help="stock trainer's forwards per optimizer step (default 1; 2 with --student: 4 pairs per "
                   "step, as fast's packs of 3072 tokens hold about 4 of these pairs; batch 4 in one forward "
                   "needed more than this 24 GiB machine on pairs of up to 2048 tokens)")
    p.add_argument("--pack-tokens", type=int, default=None,
                   help="fast path's tokens per step (default 8192; 1024 with --tiny; 3072 with --student)")
    p.add_argument("--pairs", type=int, default=None,
                   help="pairs in the dataset (default: enough for every run; 24 with --student)")
    p.add_argument("--max-length", type=int, default=None, help="max_length of both trainers (default 1024; "
                   "2048 with --student)")
    p.add_argument("--limit", type=int, default=40, help="--student: BFCL tasks imported per category")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="skip runs that would start after this (default 9, the GPU budget; 120 with --student)")
    p.add_argument("--out", default=None, help="folder for dpo_speed-<date>-<cpu|gpu>.json and .md (default "
                   "benchmarks/results; with --tiny nothing is written unless given)")
    p.add_argument("--work", default=None, help="--student: folder for tasks, pairs and run logs (default: a "
                   "temporary folder, removed at the end)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--child", nargs=2, metavar=("CONFIG", "SPEC"), help=argparse.SUPPRESS)  # one --student run
    args = p.parse_args(argv)
    if args.student:
        args.models = ["smollm2-135m"]
        args.configs = (args.configs or "stock,fast").split(",")
    else:
        args.models = (args.models or ("tiny" if args.tiny else "0.5b,1.5b")).split(",")
        args.configs = args.configs.split(",") if args.configs else list(GPU_CONFIGS)
    unknown = [c for c in args.configs if c not in ALL_CONFIGS]
    unknown += [m for m in args.models if m not in QWEN25 and not args.student]
    if unknown:
        p.error(f"unknown: {', '.join(unknown)}")
    args.ablate_on = args.ablate_on or args.models[-1]
    args.steps = args.steps or (3 if args.tiny else 6)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 2)
    args.batch_size = args.batch_size or (2 if args.student else 8)
    args.grad_accum = args.grad_accum or (2 if args.student else 1)
    args.pack_tokens = args.pack_tokens or (1024 if args.tiny else 3072 if args.student else 8192)
    args.max_length = args.max_length or (2048 if args.student else 1024)
    args.max_minutes = args.max_minutes if args.max_minutes is not None else (120.0 if args.student else 9.0)
    if args.student:
        args.pairs = args.pairs or 24
    if args.out is None and not args.tiny:
        args.out = str(REPO / "benchmarks" / "results")
    return args


# ---- data --------------------------------------------------------------------------------------------------


def build_tokenizer(path: Path):
    """One token per whitespace-separated word, so a text of n words is exactly n tokens: the lengths below are
    the lengths the trainers see. Weights are random, so what the words say does not matter for speed."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "[UNK]"]
    vocab = {t: i for i, t in enumerate(specials + [f"w{i}" for i in range(WORDS)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   unk_token="[UNK]")
    fast.save_pretrained(path)
    return fast


def synthetic_pairs(n: int, tiny: bool, seed: int) -> list[dict]:
    """Function-calling-shaped pairs: a prompt of tool schemas and a question (200-700 tokens; 20-70 with
    --tiny), a chosen call and a rejected one of 20-120 tokens each (2-12). Tasks come in groups of four pairs
    sharing a prompt, as several samples of one task do. Plain text (TRL appends EOS to each completion)."""
    rng = random.Random(seed)
    prompt_len, completion_len = ((20, 70), (2, 12)) if tiny else ((200, 700), (20, 120))

    def words(k: int) -> str:
        return " ".join(f"w{rng.randrange(WORDS)}" for _ in range(k))

    rows = []
    while len(rows) < n:
        prompt = words(rng.randint(*prompt_len))
        for _ in range(4):
            rows.append({"prompt": prompt, "chosen": " " + words(rng.randint(*completion_len)),
                         "rejected": " " + words(rng.randint(*completion_len))})
    return rows[:n]


# ---- models ------------------------------------------------------------------------------------------------


def save_random_model(shape: str, vocab_size: int, path: Path, device: str) -> None:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=vocab_size, max_position_embeddings=32768, rope_theta=1000000.0,
                         rms_norm_eps=1e-6, tie_word_embeddings=True, use_sliding_window=False,
                         bos_token_id=None, eos_token_id=2, pad_token_id=0, **QWEN25[shape])
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16 if device == "cuda" else torch.float32)
    model.save_pretrained(path)
    del model
    gc.collect()


def load_model(path: Path, tiny: bool):
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if tiny:
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
    return AutoModelForCausalLM.from_pretrained(path, quantization_config=quant, dtype=torch.bfloat16,
                                                device_map={"": 0})


def lora_config(dropout: float = 0.05):
    from peft import LoraConfig

    return LoraConfig(r=16, lora_alpha=32, lora_dropout=dropout, target_modules="all-linear", task_type="CAUSAL_LM")


# ---- trainers ----------------------------------------------------------------------------------------------


def training_args(config: str, opts, out_dir: Path, cache_dir: Path, max_steps: int):
    from trl import DPOConfig

    from distill.fast_dpo import FastDPOConfig

    common = dict(output_dir=str(out_dir), max_steps=max_steps, per_device_train_batch_size=opts.batch_size,
                  learning_rate=5e-6, lr_scheduler_type="constant", max_length=opts.max_length, beta=0.1,
                  gradient_checkpointing=not opts.student, logging_steps=1, save_strategy="no", report_to=[],
                  seed=opts.seed, dataloader_num_workers=0, disable_tqdm=True)
    if opts.tiny or opts.student:
        common.update(use_cpu=True, bf16=False)
    else:
        common.update(bf16=True)
    if config.startswith("stock"):
        return DPOConfig(**common, precompute_ref_log_probs=config == "stock-precompute",
                         gradient_accumulation_steps=opts.grad_accum)
    return FastDPOConfig(**common, fast=True, pack_tokens=opts.pack_tokens, ref_cache_dir=str(cache_dir),
                         **ABLATIONS.get(config, {}))


def make_trainer(config, model, dataset, tokenizer, args, lora_dropout: float = 0.05):
    from trl import DPOTrainer

    from distill.fast_dpo import FastDPOTrainer

    cls = DPOTrainer if config.startswith("stock") else FastDPOTrainer
    return cls(model, args=args, train_dataset=dataset, processing_class=tokenizer,
               peft_config=lora_config(lora_dropout))


def pack_stats(trainer, args) -> dict:
    """Pairs per step and how full the packs are, for a fast trainer."""
    from distill.fast_dpo.packing import packed_length, plan_packs

    pairs = trainer._stores["train"].pairs
    lengths = [packed_length(p, share_prompt=args.share_prompt) for p in pairs]
    if not args.packing:
        return {"pairs_per_step": args.per_device_train_batch_size}
    packs = plan_packs(lengths, args.pack_tokens)
    return {"pairs_per_step": round(len(pairs) / len(packs), 2),
            "pack_fill": round(sum(lengths) / (len(packs) * args.pack_tokens), 3)}


class StepClock:
    """Wall time and TRL's cumulative num_tokens at the end of every optimizer step (after a device sync)."""

    def __init__(self):
        from transformers import TrainerCallback

        clock = self

        class Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):
                clock.reset_memory()
                clock.rss_gib_at_begin = max_rss_gib()
                clock.marks.append((time.perf_counter(), 0))

            def on_step_end(self, args, state, control, **kw):
                clock.sync()
                clock.marks.append((time.perf_counter(), trl_compat.train_tokens(clock.trainer)))

        self.callback = Callback()
        self.marks: list[tuple[float, int]] = []
        self.trainer = None
        self.rss_gib_at_begin: float | None = None

    @staticmethod
    def sync():
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()

    @staticmethod
    def reset_memory():
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()


def max_rss_gib() -> float:
    """This process's maximum resident set size so far (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)


def peak_gib():
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 3) if torch.cuda.is_available() else None


def free_memory():
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def run_config(config, shape, model_dir, dataset, tokenizer, opts, work: Path, stock_init_s=None) -> dict:
    max_steps = opts.warmup + opts.steps
    args = training_args(config, opts, work / f"out-{shape}-{config}", work / f"cache-{shape}", max_steps)
    free_memory()
    t0 = time.perf_counter()
    model = load_model(model_dir, opts.tiny)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    trainer = make_trainer(config, model, dataset, tokenizer, args)
    init_s = time.perf_counter() - t0  # the fast path's reference pass (or cache lookup) happens here
    init_peak = peak_gib()
    clock = StepClock()
    clock.trainer = trainer
    trainer.add_callback(clock.callback)
    trainer.train()
    marks = clock.marks
    t_warm, tok_warm = marks[opts.warmup]
    t_end, tok_end = marks[-1]
    steps = len(marks) - 1 - opts.warmup
    step_s = (t_end - t_warm) / steps
    durations = sorted(marks[i + 1][0] - marks[i][0] for i in range(opts.warmup, len(marks) - 1))
    tokens_per_s = (tok_end - tok_warm) / (t_end - t_warm)
    row = {"model": shape, "config": config, "steps_timed": steps, "s_per_step": round(step_s, 4),
           # a slow step among fast ones is a recompilation or an allocator stall, not the steady state
           "median_step_s": round(durations[len(durations) // 2], 4), "max_step_s": round(durations[-1], 4),
           "tokens_per_step": round((tok_end - tok_warm) / steps), "tokens_per_s": round(tokens_per_s, 1),
           "peak_gib": peak_gib(), "init_peak_gib": init_peak, "load_s": round(load_s, 2),
           "init_s": round(init_s, 2), "warmup_s": round(t_warm - marks[0][0], 2)}
    if config.startswith("stock"):
        row["pairs_per_step"] = args.per_device_train_batch_size * args.gradient_accumulation_steps
    else:
        row["ref_cache_hit"] = trainer.ref_cache_hits.get("train") if trainer.ref_cache_hits else None
        row.update(pack_stats(trainer, args))
    if config in ("fast", "stock-precompute"):
        # The one-off reference pass: timed inside FastDPOTrainer; for TRL's precompute, what its construction
        # took beyond the stock trainer's. Charged to one epoch over the data the timed steps consumed.
        ref_s = trainer.ref_seconds if config == "fast" else init_s - (stock_init_s or 0.0)
        row["ref_s"] = round(ref_s, 2)
        row["e2e_tokens_per_s"] = round((tok_end - tok_warm) / ((t_end - t_warm) + ref_s), 1)
    del trainer, model
    free_memory()
    return row


# ---- correctness -------------------------------------------------------------------------------------------


def correctness_check(model_dir, dataset, tokenizer, opts, work: Path) -> dict:
    """Stock and fast trainers on the same model and the same first batch, with the same random LoRA B (so that
    the policy differs from the reference): loss and per-sequence reference log-probs."""
    import torch

    def perturb(model):
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_((torch.randn(p.shape, generator=g) * 0.05).to(p.dtype))

    out = {}
    for config in ("stock", "fast"):
        free_memory()
        args = training_args(config, opts, work / f"check-{config}", work / "check-cache", 1)
        trainer = make_trainer(config, load_model(model_dir, opts.tiny), dataset, tokenizer, args)
        perturb(trainer.model)
        n = opts.batch_size
        device = trainer.accelerator.device
        with torch.no_grad(), trainer.accelerator.autocast():
            if config == "stock":
                batch = trainer.data_collator([trainer.train_dataset[i] for i in range(n)])
                batch = {k: v.to(device) for k, v in batch.items()}
                ref = torch.cat(trl_compat.stock_reference_logps(trainer, batch))
            else:
                store = trainer._stores["train"]
                batch = trainer._collator(store, packing=True)(store.pairs[:n])
                batch = {k: v.to(device) for k, v in batch.items()}
                order = batch["pair_index"].argsort()  # the collator may regroup pairs into rows
                ref = torch.cat([batch["ref_chosen_logps"][order], batch["ref_rejected_logps"][order]])
            loss = trainer.compute_loss(trainer.model, batch)
        out[config] = {"loss": loss.float().item(), "ref_logps": ref.float().cpu()}
        del trainer
        free_memory()
    ref_diff = (out["fast"]["ref_logps"] - out["stock"]["ref_logps"]).abs()
    scale = out["stock"]["ref_logps"].abs().mean().item()
    loss_diff = abs(out["fast"]["loss"] - out["stock"]["loss"])
    # fp32 on CPU agrees to ~1e-6 (tests/test_fast_dpo.py checks 1e-5). In bf16, per-token log-probs differ by
    # ~1e-2 between attention kernels (padded SDPA vs flex), sums of ~100 tokens by ~0.1 nats against |logp| of
    # ~1,000 for a random model: 2e-3 of |logp| for the reference, 5e-3 absolute for the loss.
    ref_tol, loss_tol = (1e-5, 1e-5) if opts.tiny else (2e-3, 5e-3)
    return {"stock_loss": out["stock"]["loss"], "fast_loss": out["fast"]["loss"], "abs_loss_diff": loss_diff,
            # how far the loss is from log 2 (policy == reference), i.e. whether the check says anything
            "stock_loss_minus_log2": out["stock"]["loss"] - math.log(2),
            "max_abs_ref_logp_diff": ref_diff.max().item(), "mean_abs_ref_logp": scale,
            "ref_tolerance_rel": ref_tol, "loss_tolerance_abs": loss_tol,
            "passed": loss_diff <= loss_tol and ref_diff.max().item() <= ref_tol * scale}


# ---- the packaged student on real pairs (CPU) ------------------------------------------------------------


def distill_command(args: list[str], log: Path) -> None:
    """Run one `distill` command (the installed CLI, in a child process); its output goes to `log`."""
    cmd = [sys.executable, "-m", "distill", *args]
    print("$ distill " + " ".join(args), flush=True)
    with open(log, "a") as f:
        done = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"distill {args[0]} failed (exit {done.returncode}); see {log}")


def student_pairs(opts, work: Path) -> Path:
    """Real preference pairs from BFCL live tasks, made with distill's own commands (kept in --work on reruns)."""
    tasks, pairs = work / "tasks.jsonl", work / "pairs"
    if not tasks.is_file():
        distill_command(["import", "bfcl", "--categories", STUDENT_CATEGORIES, "--limit", str(opts.limit),
                         "--out", str(tasks)], work / "data.log")
    if not (pairs / "pairs_stats.json").is_file():
        distill_command(["pairs", "--tasks", str(tasks), "--chosen-from", "gold", "--synthetic", "2",
                         "--max-pairs-per-task", "2", "--test-size", "0", "--seed", str(opts.seed), "--out",
                         str(pairs)], work / "data.log")
    return pairs


def student_rows(pairs: Path, opts):
    """The --pairs pairs both trainers train on, in TRL's conversational format with tools."""
    from distill import train_data

    split = train_data.load_pairs(str(pairs))["train"]
    if opts.pairs > len(split):
        raise SystemExit(f"--pairs {opts.pairs}: {pairs} holds only {len(split)} pairs (raise --limit)")
    return train_data.for_stage(split.shuffle(seed=opts.seed).select(range(opts.pairs)), "dpo")


def student_child(opts) -> int:
    """One trainer, one epoch over the pairs, in this (child) process; writes its row to the spec's `row` file."""
    config, spec_file = opts.child
    spec = json.loads(Path(spec_file).read_text())
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from data_gen.local_models import resolve_model
    from distill.recipe import resolve_chat_template

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    work = Path(spec["work"])
    t0 = time.perf_counter()
    path = resolve_model(STUDENT)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template, _ = resolve_chat_template("hermes_tool")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    rows = student_rows(Path(spec["pairs"]), opts)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    load_s = time.perf_counter() - t0
    args = training_args(config, opts, work / f"out-{config}", work / f"ref-cache-{config}", -1)
    args.num_train_epochs = 1
    args.disable_tqdm = False  # a progress bar in the run's log
    t0 = time.perf_counter()
    trainer = make_trainer(config, model, rows, tokenizer, args, lora_dropout=0.0)
    init_s = time.perf_counter() - t0
    clock = StepClock()
    clock.trainer = trainer
    trainer.add_callback(clock.callback)
    trainer.train()
    (t_begin, _), (t_end, tokens) = clock.marks[0], clock.marks[-1]
    durations = sorted(clock.marks[i + 1][0] - clock.marks[i][0] for i in range(len(clock.marks) - 1))
    data = trainer.train_dataset
    prompt = [len(x) for x in data["prompt_ids"]]
    completion = [len(x) for x in data["chosen_ids"]] + [len(x) for x in data["rejected_ids"]]
    epoch_s = t_end - t_begin
    row = {"model": STUDENT, "config": config, "pairs": len(data), "steps": len(durations),
           "pairs_per_step": opts.batch_size * opts.grad_accum if config.startswith("stock") else None,
           "epoch_s": round(epoch_s, 1), "s_per_step": round(epoch_s / len(durations), 2),
           "median_step_s": round(durations[len(durations) // 2], 2), "tokens": tokens,
           "tokens_per_s": round(tokens / epoch_s, 1), "rss_gib_at_train_start": clock.rss_gib_at_begin,
           "load_s": round(load_s, 1), "init_s": round(init_s, 1), "threads": torch.get_num_threads(),
           "mean_prompt_tokens": round(sum(prompt) / len(prompt), 1), "max_prompt_tokens": max(prompt),
           "mean_completion_tokens": round(sum(completion) / len(completion), 1)}
    if not config.startswith("stock"):
        row.update(pack_stats(trainer, args), ref_s=round(trainer.ref_seconds, 1),
                   ref_cache_hit=trainer.ref_cache_hits.get("train"),
                   attention=trainer._backend, lm_head=trainer._lm_head, pack_tokens=args.pack_tokens)
        row["e2e_tokens_per_s"] = round(tokens / (epoch_s + trainer.ref_seconds), 1)
    Path(spec["row"]).write_text(json.dumps(row))
    return 0


# Started by a small launcher process, which reads the child's rusage with os.wait4 and writes its peak RSS (KiB).
# Why not wait4 from here: subprocess starts children with vfork, and Linux carries the borrowed address space's
# high-water mark into the child's ru_maxrss at exec, so a child of a large process (a test run holding models)
# would report that process's peak as its own. The launcher is small, so what it passes on is the child's own.
_LAUNCHER = (
    "import os, signal, subprocess, sys\n"
    "p = subprocess.Popen(sys.argv[2:])\n"
    "_, status, usage = os.wait4(p.pid, 0)\n"
    "open(sys.argv[1], 'w').write(str(usage.ru_maxrss))\n"
    "code = os.waitstatus_to_exitcode(status)\n"
    "if code < 0:  # die of the child's signal, so the caller sees what killed it (SIGKILL: the OOM killer)\n"
    "    if -code != signal.SIGKILL:\n"
    "        signal.signal(-code, signal.SIG_DFL)\n"
    "    os.kill(os.getpid(), -code)\n"
    "sys.exit(code)\n"
)


def run_child(cmd: list[str], log: Path, env: dict) -> tuple[int, float]:
    """(exit code, peak RSS in GiB) of a child process: its own high-water mark, measured through _LAUNCHER."""
    peak_file = log.with_name(log.name + ".peak_kib")
    peak_file.unlink(missing_ok=True)
    with open(log, "w") as f:
        code = subprocess.run([sys.executable, "-c", _LAUNCHER, str(peak_file), *cmd], cwd=REPO, env=env,
                              stdout=f, stderr=subprocess.STDOUT).returncode
    peak_kib = int(peak_file.read_text()) if peak_file.is_file() else 0
    return code, round(peak_kib / 2**20, 3)


def run_student(opts, argv: list[str], results: dict, save) -> None:
    started = time.perf_counter()
    keep = opts.work is not None
    work = Path(opts.work) if keep else Path(tempfile.mkdtemp(prefix="dpo_speed_"))
    work.mkdir(parents=True, exist_ok=True)
    pairs = student_pairs(opts, work)
    stats = json.loads((pairs / "pairs_stats.json").read_text())["summary"]
    results["data"] = {"tasks": f"BFCL {STUDENT_CATEGORIES}, --limit {opts.limit} per category",
                       "pairs_mined": stats["pairs"], "pairs_used": opts.pairs,
                       "rejected_error": stats["rejected_error"], "category": stats.get("category")}
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    for config in opts.configs:
        elapsed = (time.perf_counter() - started) / 60
        if elapsed > opts.max_minutes:
            results["runs"].append({"model": STUDENT, "config": config,
                                    "skipped": f"time ({elapsed:.1f} min > --max-minutes {opts.max_minutes})"})
            continue
        spec, row_file, log = work / f"{config}.spec.json", work / f"{config}.row.json", work / f"{config}.log"
        row_file.unlink(missing_ok=True)
        spec.write_text(json.dumps({"work": str(work), "pairs": str(pairs), "row": str(row_file)}))
        print(f"{config}: training in a child process (log: {log})", flush=True)
        code, peak = run_child([sys.executable, str(Path(__file__).resolve()), *argv, "--child", config, str(spec)],
                               log, env)
        if code == 0 and row_file.is_file():
            row = json.loads(row_file.read_text())
        else:
            row = {"model": STUDENT, "config": config, "error": f"exit {code}: " + log.read_text()[-600:]}
        row["peak_rss_gib"] = peak
        results["runs"].append(row)
        print(json.dumps(row), flush=True)
        save()
    if not keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


# ---- report ------------------------------------------------------------------------------------------------


def environment() -> dict:
    import torch
    import transformers
    import trl

    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "trl": trl.__version__, "device": "cpu", "cpu_count": os.cpu_count(),
           "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    try:
        env["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    if torch.cuda.is_available():
        env["device"] = torch.cuda.get_device_name(0)
        import bitsandbytes

        env["bitsandbytes"] = bitsandbytes.__version__
    return env


def _cell(value, fmt="{}") -> str:
    return "-" if value is None else fmt.format(value)


def table(results: dict) -> str:
    """The runs as a Markdown table; ratios against the stock run of the same model."""
    rows = [r for r in results["runs"] if "tokens_per_s" in r]
    stock = {r["model"]: r for r in rows if r["config"] == "stock"}
    fast = {r["model"]: r for r in rows if r["config"] == "fast"}
    cpu = any("peak_rss_gib" in r for r in rows)
    memory = "peak RSS GiB" if cpu else "peak GiB"
    head = ["model", "config", "pairs/step", "s/step", "tok/s", "x stock", "x fast", memory, "mem x stock",
            "ref s", "e2e tok/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        mem = r.get("peak_rss_gib") if cpu else r.get("peak_gib")
        base = stock.get(r["model"])
        base_mem = (base or {}).get("peak_rss_gib" if cpu else "peak_gib")
        cells = [r["model"], r["config"], _cell(r.get("pairs_per_step")), f"{r['s_per_step']:.3f}",
                 f"{r['tokens_per_s']:.0f}",
                 f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}" if base else "-",
                 f"{r['tokens_per_s'] / fast[r['model']]['tokens_per_s']:.2f}" if r["model"] in fast else "-",
                 _cell(mem, "{:.2f}"), f"{mem / base_mem:.2f}" if mem and base_mem else "-",
                 _cell(r.get("ref_s")), _cell(r.get("e2e_tokens_per_s"))]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    for r in results["runs"]:
        if "error" in r or "skipped" in r:
            lines.append(f"| {r['model']} | {r['config']} | " + str(r.get("error") or r.get("skipped")).replace(
                "\n", " ").replace("|", "/")[:300] + " |" + " |" * (len(head) - 3))
    c = results.get("correctness")
    if c:
        lines.append("")
        lines.append(f"correctness ({c.get('model')}): stock loss {c['stock_loss']:.6f} (log 2 "
                     f"{c.get('stock_loss_minus_log2', float('nan')):+.4f}), fast loss {c['fast_loss']:.6f}, max |ref "
                     f"logp diff| {c['max_abs_ref_logp_diff']:.4g} (mean |logp| {c['mean_abs_ref_logp']:.1f}): "
                     f"{'PASS' if c['passed'] else 'FAIL'}")
    return "\n".join(lines)


def markdown(results: dict) -> str:
    o, env = results["options"], results["env"]
    title = f"# dpo_speed {results['date']} ({results['kind']})"
    if results["kind"] == "cpu":
        d = results.get("data", {})
        about = (f"Stock TRL {env['trl']} DPOTrainer against fast DPO (distill.fast_dpo) on {STUDENT} (float32, LoRA "
                 f"r16 alpha 32 all-linear, no gradient checkpointing), max_length {o['max_length']}, one epoch over "
                 f"the same {d.get('pairs_used')} real pairs ({d.get('tasks')}; chosen: verified answers, rejected: "
                 f"synthetic hard negatives). Stock: {o['batch_size']} pairs per forward, {o['grad_accum']} forwards per "
                 f"optimizer step, reference forward every step. "
                 f"Fast: packs of {o['pack_tokens']} tokens, reference log-probs computed once before training (ref "
                 f"s). Each trainer in its own child process; peak RSS is that process's maximum resident set size "
                 f"(os.wait4), model load included. tok/s: prompt + chosen plus prompt + rejected tokens (TRL's "
                 f"num_tokens) over the epoch; e2e adds fast's reference pass. Machine: {env.get('cpu_count')} CPU "
                 f"cores, {env.get('memory_gib')} GiB, OMP_NUM_THREADS={env.get('omp_num_threads')}, torch "
                 f"{env['torch']}, transformers {env['transformers']}.")
    else:
        weights = "float32, no 4-bit (a rehearsal)" if o["tiny"] else "QLoRA nf4, bf16"
        about = (f"Stock TRL {env['trl']} DPOTrainer against fast DPO on random-initialised Qwen2.5 shapes "
                 f"({env['device']}), {weights}, LoRA r16 all-linear, gradient checkpointing, synthetic "
                 f"function-calling-shaped pairs, max_length {o['max_length']}; {o['warmup']} warm-up and "
                 f"{o['steps']} timed steps per run.")
    shown, argv = [], list(results.get("argv", []))
    while argv:  # where files went is not how the run was made
        arg = argv.pop(0)
        if arg in ("--out", "--work"):
            argv = argv[1:]
        else:
            shown.append(arg)
    command = "python benchmarks/dpo_speed.py " + " ".join(shown)
    return f"{title}\n\n{about}\n\n    {command}\n\n{table(results)}\n"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    opts = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if opts.child:
        return student_child(opts)
    import torch

    if opts.tiny or opts.student:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    elif not torch.cuda.is_available():
        print("no CUDA device: run with --student (CPU benchmark) or --tiny (CPU rehearsal)", file=sys.stderr)
        return 2
    started = time.perf_counter()
    date = datetime.date.today().isoformat()
    kind = "tiny" if opts.tiny else "cpu" if opts.student else "gpu"
    results = {"date": date, "kind": kind, "argv": argv, "env": environment(),
               "options": {k: v for k, v in vars(opts).items() if k != "child"}, "runs": []}
    out_dir = Path(opts.out) if opts.out else None

    def save():
        if out_dir is None:
            return
        from eval.io import atomic_write

        out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_write(out_dir / f"dpo_speed-{date}-{kind}.json") as f:
            f.write(json.dumps(results, indent=2, default=str) + "\n")
        with atomic_write(out_dir / f"dpo_speed-{date}-{kind}.md") as f:
            f.write(markdown(results))

    if opts.student:
        run_student(opts, argv, results, save)
        results["wall_s"] = round(time.perf_counter() - started, 1)
        save()
        print()
        print(table(results))
        return 0 if all("tokens_per_s" in r for r in results["runs"]) else 1

    from datasets import Dataset

    n_pairs = opts.pairs or max(opts.batch_size * (opts.warmup + opts.steps), 16 * (opts.warmup + opts.steps))
    device = "cpu" if opts.tiny else "cuda"
    with tempfile.TemporaryDirectory(prefix="dpo_speed_") as tmp:
        work = Path(tmp)
        tokenizer = build_tokenizer(work / "tokenizer")
        dataset = Dataset.from_list(synthetic_pairs(n_pairs, opts.tiny, opts.seed))
        results["data"] = {"pairs": n_pairs}
        print(f"{results['env']}\n{n_pairs} pairs; configs {', '.join(opts.configs)}", flush=True)

        plan = []
        for shape in opts.models:
            plan += [(shape, c) for c in opts.configs if c in ("stock", "fast", "stock-precompute")]
        plan += [(opts.ablate_on, c) for c in opts.configs if c not in ("stock", "fast", "stock-precompute")]

        model_dirs = {}
        for shape in dict.fromkeys([s for s, _ in plan] + [opts.models[0]]):
            model_dirs[shape] = work / f"model-{shape}"
            t0 = time.perf_counter()
            save_random_model(shape, len(tokenizer) if opts.tiny else 151936, model_dirs[shape], device)
            print(f"{shape}: random model saved in {time.perf_counter() - t0:.1f}s", flush=True)

        try:
            results["correctness"] = correctness_check(model_dirs[opts.models[0]], dataset, tokenizer, opts, work)
            results["correctness"]["model"] = opts.models[0]
        except Exception as e:  # report and go on: the timings are still worth having
            traceback.print_exc()
            results["correctness"] = {"error": f"{type(e).__name__}: {e}", "passed": False,
                                      "stock_loss": float("nan"), "fast_loss": float("nan"),
                                      "max_abs_ref_logp_diff": float("nan"), "mean_abs_ref_logp": float("nan")}
        print(f"correctness: {results['correctness']}", flush=True)
        save()

        for shape, config in plan:
            elapsed = (time.perf_counter() - started) / 60
            if elapsed > opts.max_minutes:
                results["runs"].append({"model": shape, "config": config,
                                        "skipped": f"time ({elapsed:.1f} min > --max-minutes {opts.max_minutes})"})
                continue
            stock_init = next((r["init_s"] for r in results["runs"] if r["model"] == shape and r["config"] == "stock"
                               and "init_s" in r), None)
            try:
                row = run_config(config, shape, model_dirs[shape], dataset, tokenizer, opts, work, stock_init)
            except Exception as e:
                traceback.print_exc()
                row = {"model": shape, "config": config, "error": f"{type(e).__name__}: {str(e)[:300]}"}
                free_memory()
            results["runs"].append(row)
            print(json.dumps(row), flush=True)
            save()

    results["wall_s"] = round(time.perf_counter() - started, 1)
    save()
    print()
    print(table(results))
    return 0 if results["correctness"].get("passed") else 1


if __name__ == "__main__":
    raise SystemExit(main())
