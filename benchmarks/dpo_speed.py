"""Fast DPO (distill.fast_dpo) against stock TRL 1.16 DPOTrainer: tokens/s and peak GPU memory, same model
shape, same QLoRA settings, same synthetic function-calling-shaped data, same process.

    python benchmarks/dpo_speed.py                       # CUDA: Qwen2.5-0.5B and 1.5B shapes, all configs
    python benchmarks/dpo_speed.py --tiny                # CPU: a tiny Qwen2 shape, proves the script runs
    OUT=results python benchmarks/dpo_speed.py --models 1.5b --configs stock,fast --steps 8

On a bare CUDA machine (Python 3.12, torch, transformers, peft, accelerate), install trl, bitsandbytes and
datasets from wheels first (shared/gpu/fetch-wheels.sh), then run from the repository root with
PYTHONPATH=$PWD/.site:$PWD.

Order: a correctness check (fast vs stock loss and reference log-probs on one batch, random LoRA weights so the
loss is not log 2), then for each model shape stock and fast, then the ablations on the last shape, each one
part of the fast path switched off:
  fast-no-share     prompt + chosen and prompt + rejected as separate sequences (no prefix sharing)
  fast-no-pack      8 pairs per step, one per row, padded to the longest (no packing)
  fast-no-refcache  a reference forward every step instead of the cached log-probs
  fast-full-head    logits at every position instead of the fused head on completion tokens
  fast-sdpa         dense-mask SDPA instead of block-sparse flex attention
and stock-precompute (TRL's own precompute_ref_log_probs) for reference.

Models are random-initialised from configs written below (no hub), saved once in bf16 and loaded in 4-bit:
nf4, double quantisation, bf16 compute; LoRA r16 on all linear layers; gradient checkpointing; bf16. Data:
prompts of 200-700 tokens, completions of 20-120, as tool schemas plus a question against a tool call.
tokens/s counts what a pair stands for, prompt + chosen plus prompt + rejected (TRL's num_tokens), for both
paths, so the figures compare DPO work done per second. Steady state: warm-up steps (compilation, allocator)
are left out; the fast path's one-off reference pass is reported on its own (ref_s) and in an end-to-end rate
over one epoch of the timed data (e2e tok/s). Prints a table last; writes JSON to $OUT/dpo_speed.json when
$OUT is set (rewritten after every run, so a killed run leaves what it measured).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import random
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
    "fast-no-share": dict(share_prompt=False),
    "fast-no-pack": dict(packing=False),
    "fast-no-refcache": dict(cache_ref_logps=False),
    "fast-full-head": dict(lm_head="full"),
    "fast-sdpa": dict(attention_backend="sdpa"),
}
ALL_CONFIGS = ["stock", "fast", *ABLATIONS, "stock-precompute"]
WORDS = 2000  # word-level vocabulary of the synthetic tokenizer


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="CPU smoke run: tiny model, short sequences, no 4-bit")
    p.add_argument("--models", default=None, help="comma list of 0.5b,1.5b (default both; tiny with --tiny)")
    p.add_argument("--configs", default=",".join(ALL_CONFIGS), help=f"comma list of {','.join(ALL_CONFIGS)}")
    p.add_argument("--ablate-on", default=None, help="model shape for the ablations (default: the last one)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per run (default 6; 3 with --tiny)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2; 1 with --tiny)")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per step of the stock trainer")
    p.add_argument("--pack-tokens", type=int, default=None, help="fast path row budget (default 8192; 1024 tiny)")
    p.add_argument("--pairs", type=int, default=None, help="pairs in the dataset (default: enough for every run)")
    p.add_argument("--max-minutes", type=float, default=9.0, help="skip runs that would start after this")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.models = (args.models or ("tiny" if args.tiny else "0.5b,1.5b")).split(",")
    args.configs = args.configs.split(",")
    unknown = [c for c in args.configs if c not in ALL_CONFIGS] + [m for m in args.models if m not in QWEN25]
    if unknown:
        p.error(f"unknown: {', '.join(unknown)}")
    args.ablate_on = args.ablate_on or args.models[-1]
    args.steps = args.steps or (3 if args.tiny else 6)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 2)
    args.pack_tokens = args.pack_tokens or (1024 if args.tiny else 8192)
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


def lora_config():
    from peft import LoraConfig

    return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")


# ---- trainers ----------------------------------------------------------------------------------------------


def training_args(config: str, opts, out_dir: Path, cache_dir: Path, max_steps: int):
    from trl import DPOConfig

    from distill.fast_dpo import FastDPOConfig

    common = dict(output_dir=str(out_dir), max_steps=max_steps, per_device_train_batch_size=opts.batch_size,
                  learning_rate=5e-6, lr_scheduler_type="constant", max_length=1024, beta=0.1,
                  gradient_checkpointing=True, logging_steps=1, save_strategy="no", report_to=[], seed=opts.seed,
                  dataloader_num_workers=0, disable_tqdm=True)
    if opts.tiny:
        common.update(use_cpu=True, bf16=False)
    else:
        common.update(bf16=True)
    if config.startswith("stock"):
        return DPOConfig(**common, precompute_ref_log_probs=config == "stock-precompute")
    return FastDPOConfig(**common, fast=True, pack_tokens=opts.pack_tokens, ref_cache_dir=str(cache_dir),
                         **ABLATIONS.get(config, {}))


def make_trainer(config, model, dataset, tokenizer, args):
    from trl import DPOTrainer

    from distill.fast_dpo import FastDPOTrainer

    cls = DPOTrainer if config.startswith("stock") else FastDPOTrainer
    return cls(model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=lora_config())


class StepClock:
    """Wall time and TRL's cumulative num_tokens at the end of every optimizer step (after a device sync)."""

    def __init__(self):
        from transformers import TrainerCallback

        clock = self

        class Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):
                clock.reset_memory()
                clock.marks.append((time.perf_counter(), 0))

            def on_step_end(self, args, state, control, **kw):
                clock.sync()
                clock.marks.append((time.perf_counter(), trl_compat.train_tokens(clock.trainer)))

        self.callback = Callback()
        self.marks: list[tuple[float, int]] = []
        self.trainer = None

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
    if not config.startswith("stock"):
        row["ref_cache_hit"] = trainer.ref_cache_hits.get("train") if trainer.ref_cache_hits else None
        store = trainer._stores["train"]
        from distill.fast_dpo.packing import packed_length, plan_packs

        packs = plan_packs([packed_length(p, share_prompt=args.share_prompt) for p in store.pairs], args.pack_tokens)
        row["pairs_per_step"] = round(len(store.pairs) / len(packs), 2) if args.packing else args.per_device_train_batch_size
        row["pack_fill"] = round(sum(packed_length(p, share_prompt=args.share_prompt) for p in store.pairs)
                                 / (len(packs) * args.pack_tokens), 3)
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


# ---- report ------------------------------------------------------------------------------------------------


def environment() -> dict:
    import torch
    import transformers
    import trl

    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "trl": trl.__version__, "device": "cpu"}
    if torch.cuda.is_available():
        env["device"] = torch.cuda.get_device_name(0)
        import bitsandbytes

        env["bitsandbytes"] = bitsandbytes.__version__
    return env


def table(results: dict) -> str:
    rows = [r for r in results["runs"] if "tokens_per_s" in r]
    stock = {r["model"]: r["tokens_per_s"] for r in rows if r["config"] == "stock"}
    fast = {r["model"]: r["tokens_per_s"] for r in rows if r["config"] == "fast"}
    head = f"{'model':<6} {'config':<17} {'s/step':>7} {'tok/step':>8} {'tok/s':>9} {'x stock':>7} {'x fast':>6} " \
           f"{'peak GiB':>8} {'ref s':>6} {'e2e tok/s':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        xs = f"{r['tokens_per_s'] / stock[r['model']]:.2f}" if r["model"] in stock else "-"
        xf = f"{r['tokens_per_s'] / fast[r['model']]:.2f}" if r["model"] in fast else "-"
        peak = f"{r['peak_gib']:.2f}" if r.get("peak_gib") is not None else "n/a"
        lines.append(f"{r['model']:<6} {r['config']:<17} {r['s_per_step']:>7.3f} {r['tokens_per_step']:>8} "
                     f"{r['tokens_per_s']:>9.0f} {xs:>7} {xf:>6} {peak:>8} {r.get('ref_s', '-'):>6} "
                     f"{r.get('e2e_tokens_per_s', '-'):>9}")
    for r in results["runs"]:
        if "error" in r or "skipped" in r:
            lines.append(f"{r['model']:<6} {r['config']:<17} {r.get('error') or r.get('skipped')}")
    c = results.get("correctness")
    if c:
        lines.append(f"correctness ({c.get('model')}): stock loss {c['stock_loss']:.6f} (log 2 "
                     f"{c.get('stock_loss_minus_log2', float('nan')):+.4f}), fast loss {c['fast_loss']:.6f}, max |ref logp "
                     f"diff| {c['max_abs_ref_logp_diff']:.4g} (mean |logp| {c['mean_abs_ref_logp']:.1f}): "
                     f"{'PASS' if c['passed'] else 'FAIL'}")
    return "\n".join(lines)


def main(argv=None) -> int:
    opts = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from datasets import Dataset

    if opts.tiny:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    elif not torch.cuda.is_available():
        print("no CUDA device: run with --tiny for the CPU smoke run", file=sys.stderr)
        return 2
    started = time.perf_counter()
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else None
    results = {"env": environment(), "options": {k: v for k, v in vars(opts).items()}, "runs": []}

    def save():
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "dpo_speed.json").write_text(json.dumps(results, indent=2, default=str) + "\n")

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
            plan += [(shape, c) for c in opts.configs if c in ("stock", "fast")]
        plan += [(opts.ablate_on, c) for c in opts.configs if c not in ("stock", "fast")]

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
