"""`distill eval` with the hf backend: batched generation against sequential (batch size 1), same model, same
tasks, same greedy settings, in one process. Prints a table last; the ratio is batched tokens/s over sequential.

    OMP_NUM_THREADS=1 python benchmarks/eval_batching.py                       # CPU: tiny model + LoRA, ~1 min
    python benchmarks/eval_batching.py --shape 0.5b --device cuda --dtype bfloat16 --n 256 --batch-sizes 1,16,64
    python benchmarks/eval_batching.py --model Qwen/Qwen2.5-0.5B-Instruct --adapter checkpoints/qwen05-dpo \\
        --tasks tasks.jsonl --device cuda --batch-sizes 1,32                   # a real student, real tasks

Each row runs distill.evaluate.evaluate() (what `distill eval` runs: generate into a fresh folder, then score)
on one loaded HFBackend whose batch size is changed between rows, after one warm-up batch. Reported per row:
generation wall time, completion tokens, tokens/s over the wall clock, per-example latency p50/p95 (in a batch,
every row waits for the batch), accuracy, and how many answers equal the sequential run's (greedy decoding with
left padding should give the same answers; in bf16 on a GPU a few may differ by rounding).

Models: --shape builds a random-weight model (no Hub) with the tiny test tokenizer and distill's Hermes tool
template: `tiny` (2 layers, hidden 64) or the layer shapes of Qwen2.5-0.5B / 1.5B as a Llama config. Random
weights rarely emit the end-of-turn token, so every answer runs to --max-new-tokens: the rows compare decoding
throughput at equal lengths, while a trained student's answers end at different lengths and a batch then waits
for its longest. With --model a real model is used (its weights must be on the machine). Tasks: --tasks, else
BFCL simple_python from the installed bfcl-eval, else synthetic tasks with prompts of varied length.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHAPES = {
    "tiny": None,  # distill/testing/tiny_model.py as it is
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2),
}


def build_model(path: Path, shape: str) -> Path:
    """A random-weight model of `shape` with the tiny tokenizer (vocabulary 512: the LM head is small, so the
    larger shapes measure the transformer layers, which dominate a real model's decoding)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from distill.testing.tiny_model import build_tiny_model

    build_tiny_model(path)
    if SHAPES[shape] is None:
        return path
    base = json.loads((path / "config.json").read_text())
    config = LlamaConfig(**SHAPES[shape], vocab_size=base["vocab_size"], max_position_embeddings=4096,
                         attention_bias=True, tie_word_embeddings=True, eos_token_id=base["eos_token_id"],
                         pad_token_id=base["pad_token_id"], bos_token_id=None)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    for f in path.glob("model*.safetensors"):
        f.unlink()
    model.save_pretrained(path)
    return path


def build_adapter(model_dir: Path, path: Path) -> Path:
    """A LoRA adapter (r 16 on the attention and MLP projections) with random weights, as a student has."""
    import shutil

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                           LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                           "gate_proj", "up_proj", "down_proj"],
                                      init_lora_weights=False, task_type="CAUSAL_LM"))
    model.save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (model_dir / name).is_file():
            shutil.copy(model_dir / name, path / name)
    return path


def build_tasks(path: Path, n: int) -> tuple[Path, str]:
    """BFCL simple_python (first n) when bfcl-eval is installed, else synthetic tasks of varied prompt length."""
    try:
        from data_gen.bfcl import import_bfcl
        from eval.io import write_jsonl

        write_jsonl(path, import_bfcl(["simple_python"], limit=n))
        return path, "BFCL simple_python"
    except Exception as e:  # bfcl-eval not installed, or its API moved: synthetic tasks still measure batching
        print(f"(BFCL tasks unavailable: {type(e).__name__}: {e}; using synthetic tasks)", file=sys.stderr)
    from distill.testing.report_builders import write_tasks

    write_tasks(path, {"simple": n})
    return path, "synthetic"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=list(SHAPES), default="tiny", help="random-weight model shape (default: tiny)")
    ap.add_argument("--model", default=None, help="a real model (Hub id or folder) instead of --shape")
    ap.add_argument("--adapter", default=None, help="LoRA adapter for --model (default with --shape: a random r16 one; "
                    "'none' for the base model alone)")
    ap.add_argument("--tasks", default=None, help="tasks .jsonl (default: BFCL simple_python, else synthetic)")
    ap.add_argument("--n", type=int, default=32, help="tasks used (default: %(default)s)")
    ap.add_argument("--batch-sizes", default="1,16", help="comma-separated; the first is the baseline (default: %(default)s)")
    ap.add_argument("--max-new-tokens", type=int, default=32, help="answer length cap (default: %(default)s)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, ... (default: %(default)s)")
    ap.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    args = ap.parse_args()

    import torch

    from data_gen.backends.base import Sampling
    from data_gen.backends.hf_backend import HFBackend
    from distill.evaluate import evaluate
    from eval.tasks import load_tasks

    work = Path(tempfile.mkdtemp(prefix="eval_batching."))
    if args.model:
        model, adapter = args.model, (None if args.adapter in (None, "none") else args.adapter)
    else:
        model = str(build_model(work / "model", args.shape))
        adapter = None if args.adapter == "none" else (args.adapter or str(build_adapter(Path(model), work / "adapter")))
    if args.tasks:
        tasks_path, source = Path(args.tasks), args.tasks
    else:
        tasks_path, source = build_tasks(work / "tasks.jsonl", args.n)
    n_tasks = min(args.n, len(load_tasks(tasks_path)))
    sizes = [int(s) for s in args.batch_sizes.split(",")]

    backend = HFBackend(model, sampling=Sampling(temperature=0, max_new_tokens=args.max_new_tokens), batch_size=sizes[0],
                        device=args.device, dtype=args.dtype, adapter=adapter)
    # Warm-up: the first generate() pays for kernel selection and allocator growth, whichever row runs first.
    evaluate(tasks_path, backend, work / "warmup", adapter=adapter, limit=min(4, n_tasks), plots=False, progress=False)

    rows, answers = [], {}
    for size in sizes:
        backend.batch_size = size
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        report, summary = evaluate(tasks_path, backend, work / f"bs{size}", adapter=adapter, limit=n_tasks,
                                   plots=False, progress=False)
        total = time.perf_counter() - t0
        traces = [json.loads(line) for line in (work / f"bs{size}" / "traces.jsonl").read_text().splitlines()]
        answers[size] = {t["task_id"]: t["raw"] for t in traces}
        gen, tp = report["generation"], report["throughput"]
        rows.append({"batch_size": size, "traces": summary.written, "gen_wall_s": gen["wall_s"], "eval_wall_s": round(total, 3),
                     "completion_tokens": gen["completion_tokens"], "tokens_per_s": gen["completion_tokens_per_s"],
                     "latency_p50_s": tp["latency_p50_s"], "latency_p95_s": tp["latency_p95_s"],
                     "accuracy": report["accuracy"]})
    base = rows[0]
    for r in rows:
        r["ratio"] = round(r["tokens_per_s"] / base["tokens_per_s"], 2) if base["tokens_per_s"] else None
        same = sum(answers[r["batch_size"]][k] == v for k, v in answers[base["batch_size"]].items())
        r["same_answers"] = f"{same}/{len(answers[base['batch_size']])}"

    env = {"device": args.device, "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None,
           "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
           "platform": platform.platform(), "model": args.model or f"random {args.shape} shape",
           "adapter": "yes" if adapter else "no", "tasks": f"{n_tasks} ({source})", "max_new_tokens": args.max_new_tokens,
           "dtype": args.dtype, "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if os.environ.get("OUT"):
        Path(os.environ["OUT"]).mkdir(parents=True, exist_ok=True)
        (Path(os.environ["OUT"]) / "eval_batching.json").write_text(json.dumps({"env": env, "rows": rows}, indent=2))
    print("\n" + ", ".join(f"{k}: {v}" for k, v in env.items()))
    cols = ["batch_size", "traces", "gen_wall_s", "completion_tokens", "tokens_per_s", "ratio", "latency_p50_s",
            "latency_p95_s", "accuracy", "same_answers"]
    print("| " + " | ".join(cols) + " |\n|" + " --- |" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
