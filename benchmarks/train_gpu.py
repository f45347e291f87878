"""GPU check for `distill train`: QLoRA SFT and DPO on a random-initialised Qwen2.5-1.5B-shaped model through
distill's own entry point (`python -m distill.train RECIPE.yaml`), beside stock TRL 1.16 DPOTrainer on the same
data, same QLoRA settings, same machine, in the same run. Prints a table last.

On a bare CUDA machine (Python 3.12 with torch, transformers, peft, accelerate; no trl, bitsandbytes, datasets):
    pip download -d .whl trl datasets bitsandbytes ...  # beforehand, where pip works (see docs/training.md)
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
    OUT=/tmp/out python3 benchmarks/train_gpu.py      # about 6 min on one H100; details in $OUT/train_gpu.json
    python3 benchmarks/train_gpu.py --dry-run         # any machine: build tokenizer, data and recipes; print lengths
    python3 benchmarks/train_gpu.py --tiny            # CPU: the whole flow on a 2-layer shape, a few steps

Model: Qwen2.5-1.5B's shapes (hidden 1536, 28 layers, 12 heads, 2 KV heads, MLP 8960, vocabulary 151936, q/k/v
bias, tied embeddings) as a Llama config with attention_bias, which computes the same thing (Qwen2 is Llama with
q/k/v bias); a Qwen2 config would make transformers rebuild the test tokenizer as a Qwen2Tokenizer on reload.
Weights random (no hub), saved once in bf16, loaded 4-bit: NF4, double quantisation, bf16 compute; LoRA r16 on
all linear layers; gradient checkpointing; batch 8; bf16. Data: function-calling pairs with prompts of 200-700
tokens (tool schemas and a question) and answers of 20-120 (calls), the distill preference format.

Runs, each in its own process so peak memory is its own:
  distill-sft            distill train, stage sft (prompt + chosen, loss on the answer)
  distill-dpo            distill train, stage dpo, as the recipes: precompute_ref_log_probs
  trl-dpo                stock TRL DPOTrainer, defaults (reference forward every step)
  trl-dpo-precompute     stock TRL DPOTrainer with precompute_ref_log_probs, distill-dpo's setting
s/step is the median over steps after the first two; tokens/s is TRL's num_tokens (non-padding tokens of every
sequence, prompt counted with each answer) per second over the same steps; peak GiB is
torch.cuda.max_memory_allocated during training.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHAPES = {
    "1.5b": dict(
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        vocab_size=151936,
        max_position_embeddings=32768,
        rope_theta=1e6,
    ),
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
        max_position_embeddings=4096,
        rope_theta=1e4,
    ),
}
WORDS = (
    "city unit amount currency date time range value limit offset query filter region sensor account "
    "order status price volume weight height width depth speed angle radius count label name code"
).split()


def build_model(path: Path, shape: str, *, weights: bool = True) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from distill.testing.tiny_model import build_tiny_model

    build_tiny_model(
        path
    )  # tokenizer (ChatML + distill's Hermes tool template) and a tiny model, replaced below
    if not weights:
        return
    tok_vocab = json.loads((path / "config.json").read_text())["vocab_size"]
    cfg = dict(SHAPES[shape])
    cfg["vocab_size"] = max(cfg["vocab_size"], tok_vocab)
    config = LlamaConfig(
        **cfg,
        attention_bias=True,
        tie_word_embeddings=True,
        rms_norm_eps=1e-6,
        eos_token_id=2,
        pad_token_id=0,
        bos_token_id=None,
        dtype="bfloat16",
    )
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() and shape != "tiny" else "cpu"
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    for f in path.glob("model*.safetensors"):
        f.unlink()
    model.save_pretrained(path)
    del model


def _tool(rng: random.Random, i: int) -> dict:
    props = {
        f"{rng.choice(WORDS)}_{j}": {
            "type": rng.choice(["string", "number", "integer"]),
            "description": " ".join(rng.choices(WORDS, k=rng.randint(3, 9))),
        }
        for j in range(rng.randint(2, 6))
    }
    return {
        "type": "function",
        "function": {
            "name": f"{rng.choice(WORDS)}_{rng.choice(WORDS)}_{i}",
            "description": " ".join(rng.choices(WORDS, k=rng.randint(6, 20))),
            "parameters": {"type": "object", "properties": props, "required": list(props)[:2]},
        },
    }


def _call(rng: random.Random, tool: dict, target_tokens: int, tok) -> dict:
    """A call of `tool` whose rendered answer (Hermes template, end-of-turn included) is about target_tokens."""
    name, params = tool["function"]["name"], list(tool["function"]["parameters"]["properties"])[:2]
    args = {p: rng.choice(WORDS) for p in params}

    def length():
        text = f'<tool_call>\n{{"name": "{name}", "arguments": {json.dumps(args)}}}\n</tool_call><|im_end|>\n'
        return len(tok(text, add_special_tokens=False)["input_ids"])

    while length() < target_tokens:
        p = rng.choice(params)
        args[p] += " " + rng.choice(WORDS)
    return {"type": "function", "function": {"name": name, "arguments": json.dumps(args)}}


def build_pairs(path: Path, model_dir: Path, n_train: int, n_test: int, seed: int = 0) -> None:
    """Preference pairs in distill's format with prompts of 200-700 tokens and answers of 20-120 (measured with
    the model's tokenizer and chat template)."""
    from datasets import Dataset, DatasetDict
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    rng = random.Random(seed)
    rows = []
    for i in range(n_train + n_test):
        target, tools = rng.randint(200, 700), []
        prompt = [
            {"role": "user", "content": "Please " + " ".join(rng.choices(WORDS, k=rng.randint(5, 20))) + "?"}
        ]
        while len(tools) < 50:  # add tool schemas until the prompt reaches its target length
            tools.append(_tool(rng, len(tools)))
            text = tok.apply_chat_template(prompt, tools=tools, add_generation_prompt=True, tokenize=False)
            length = len(tok(text, add_special_tokens=False)["input_ids"])
            if length >= target:
                if length > 700 and len(tools) > 1:
                    tools.pop()
                break
        right, wrong = rng.choice(tools), rng.choice(tools)
        chosen = _call(rng, right, rng.randint(20, 120), tok)
        rejected = _call(rng, wrong, rng.randint(20, 120), tok)
        rows.append(
            {
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": None, "tool_calls": [chosen]}],
                "rejected": [{"role": "assistant", "content": None, "tool_calls": [rejected]}],
                "tools": json.dumps(tools),
                "task_id": f"bench_{i}",
                "chosen_source": "teacher",
                "rejected_source": "synthetic",
                "rejected_error": "wrong_function",
            }
        )
    DatasetDict(train=Dataset.from_list(rows[:n_train]), test=Dataset.from_list(rows[n_train:])).save_to_disk(
        str(path)
    )


def recipe(stage: str, model_dir: Path, pairs: Path, out: Path, steps: int, batch: int, tiny: bool) -> dict:
    r = {
        "stage": stage,
        "model_name_or_path": str(model_dir),
        "dtype": "float32" if tiny else "bfloat16",
        "dataset_path": str(pairs),
        "output_dir": str(out),
        "use_peft": True,
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "nf4",
        "use_bnb_nested_quant": True,
        "lora_r": 16,
        "lora_alpha": 32,
        "lora_dropout": 0.05,
        "lora_target_modules": "all-linear",
        "max_length": 1024,
        "max_steps": steps,
        "per_device_train_batch_size": batch,
        "learning_rate": 2e-4 if stage == "sft" else 2e-5,
        "gradient_checkpointing": not tiny,
        "bf16": not tiny,
        "use_cpu": tiny,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "seed": 0,
        "max_truncated_share": 0.0,
    }
    if stage == "dpo":
        r.update(beta=0.1, precompute_ref_log_probs=True)
    return r


def stock_dpo(config_path: str) -> None:
    """Stock TRL: DPOTrainer loads the model from its path with a BitsAndBytesConfig and applies a LoraConfig;
    the dataset goes in as stored (JSON-string arguments, which the Hermes template renders verbatim)."""
    import torch
    from datasets import load_from_disk
    from peft import LoraConfig
    from transformers import AutoTokenizer, BitsAndBytesConfig
    from trl import DPOConfig, DPOTrainer

    from distill.run_info import ThroughputCallback

    c = json.loads(Path(config_path).read_text())
    tiny = c["tiny"]
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32 if tiny else torch.bfloat16,
    )
    args = DPOConfig(
        output_dir=c["out"],
        max_steps=c["steps"],
        per_device_train_batch_size=c["batch"],
        learning_rate=2e-5,
        beta=0.1,
        max_length=1024,
        gradient_checkpointing=not tiny,
        bf16=not tiny,
        use_cpu=tiny,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
        precompute_ref_log_probs=c["precompute"],
        model_init_kwargs={"dtype": "float32" if tiny else "bfloat16"},
    )
    lora = LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"
    )
    throughput = ThroughputCallback()
    trainer = DPOTrainer(
        model=c["model"],
        args=args,
        train_dataset=load_from_disk(c["pairs"])["train"],
        processing_class=AutoTokenizer.from_pretrained(c["model"]),
        quantization_config=quant,
        peft_config=lora,
        callbacks=[throughput],
    )
    trainer.train()
    Path(c["result"]).write_text(json.dumps(throughput.summary()))


def run(name: str, cmd: list[str], log: Path) -> dict:
    t0 = time.time()
    with open(log, "a") as f:
        f.write(f"\n===== {name}: {' '.join(cmd)}\n")
        f.flush()
        rc = subprocess.run(
            cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        ).returncode
    return {"rc": rc, "wall_s": round(time.time() - t0, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="2-layer shape on the CPU (checks the script runs)")
    ap.add_argument("--dry-run", action="store_true", help="build tokenizer, data and recipes; train nothing")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 20; tiny 4)")
    ap.add_argument("--batch", type=int, default=8, help="sequences (pairs for DPO) per step")
    ap.add_argument("--runs", default="distill-sft,distill-dpo,trl-dpo,trl-dpo-precompute")
    ap.add_argument(
        "--work", default=None, help="scratch folder for model, data, runs (default: a temp folder)"
    )
    ap.add_argument("--stock-dpo", default=None, help=argparse.SUPPRESS)  # internal: one stock TRL run
    a = ap.parse_args()
    if a.stock_dpo:
        stock_dpo(a.stock_dpo)
        return 0

    import torch
    import yaml

    tiny = a.tiny
    steps = a.steps or (4 if tiny else 20)
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else None
    work = Path(a.work or tempfile.mkdtemp(prefix="train_gpu_"))
    log = (out_dir or work) / "train_gpu.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    # One epoch of distinct pairs for the timed steps (so the precomputed reference pass is one epoch too).
    n_train = steps * a.batch
    t0 = time.time()
    build_model(work / "model", "tiny" if tiny else "1.5b", weights=not a.dry_run)
    build_pairs(work / "pairs", work / "model", n_train, 16)
    print(f"model and {n_train} pairs built in {time.time() - t0:.0f} s under {work}")

    from datasets import load_from_disk
    from transformers import AutoTokenizer

    from distill import preflight, train_data

    tok = AutoTokenizer.from_pretrained(work / "model")
    rows = train_data.for_stage(load_from_disk(str(work / "pairs"))["train"], "dpo")
    audit = preflight.audit_lengths(
        rows, tok, stage="dpo", max_length=1024, truncation_mode="keep_start", max_truncated_share=0.0
    )
    print(
        "tokens: "
        + ", ".join(
            f"{k} p50 {audit[k]['p50']} max {audit[k]['max']}" for k in ("prompt", "chosen", "rejected")
        )
    )
    results = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "shape": "tiny" if tiny else "Qwen2.5-1.5B",
        "steps": steps,
        "batch": a.batch,
        "audit": audit,
        "runs": {},
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "host": platform.platform(),
        "versions": {},
    }
    for name in ("sft", "dpo"):
        (work / f"{name}.yaml").write_text(
            yaml.safe_dump(
                recipe(name, work / "model", work / "pairs", work / f"distill-{name}", steps, a.batch, tiny)
            )
        )
    if a.dry_run:
        print(f"dry run: recipes {work}/sft.yaml, {work}/dpo.yaml; nothing trained")
        return 0

    for name in a.runs.split(","):
        if name.startswith("distill-"):
            stage = name.split("-")[1]
            status = run(name, [sys.executable, "-m", "distill.train", str(work / f"{stage}.yaml")], log)
            run_json = work / name / "run.json"
            info = json.loads(run_json.read_text()) if run_json.is_file() else {}
            status.update(info.get("throughput", {}))
            results["versions"] = info.get("libraries", results["versions"])
        else:
            cfg = {
                "model": str(work / "model"),
                "pairs": str(work / "pairs"),
                "out": str(work / name),
                "steps": steps,
                "batch": a.batch,
                "tiny": tiny,
                "precompute": name.endswith("precompute"),
                "result": str(work / f"{name}.json"),
            }
            (work / f"{name}.config.json").write_text(json.dumps(cfg))
            status = run(
                name, [sys.executable, __file__, "--stock-dpo", str(work / f"{name}.config.json")], log
            )
            if Path(cfg["result"]).is_file():
                status.update(json.loads(Path(cfg["result"]).read_text()))
        results["runs"][name] = status
        if out_dir:  # rewritten after every run, so a run cut short leaves what it measured
            (out_dir / "train_gpu.json").write_text(json.dumps(results, indent=2))

    lines = [
        f"{results['shape']} shape, QLoRA r16 all-linear, batch {a.batch}, {steps} steps, "
        f"{results['gpu'] or 'CPU'}, {results['date'][:10]}",
        "| run | exit | s/step | tokens/s | peak GiB | wall s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in results["runs"].items():
        lines.append(
            f"| {name} | {r['rc']} | {r.get('median_step_s')} | {r.get('tokens_per_s')} | "
            f"{r.get('peak_gpu_mem_gib')} | {r['wall_s']} |"
        )
    table = "\n".join(lines)
    if out_dir:
        (out_dir / "train_gpu.md").write_text(table + "\n")
    print(f"log: {log}\n\n{table}")
    return 0 if all(r["rc"] == 0 for r in results["runs"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
