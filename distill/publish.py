"""`distill publish`: a trained student, or a preference dataset, to the Hugging Face Hub with its card.

    distill publish checkpoints/qwen05-dpo --repo-id me/qwen05-fc --dry-run     # stage and validate, upload nothing
    distill publish checkpoints/qwen05-dpo --repo-id me/qwen05-fc --private
    distill publish checkpoints/tiny --repo-id me/tiny --model Qwen/Qwen2.5-0.5B-Instruct   # base was a local folder
    distill publish --dataset pairs/ --repo-id me/fc-pairs

A checkpoint is staged into a folder (default CHECKPOINT/publish, rebuilt atomically) holding exactly what a
user needs: the LoRA adapter, the tokenizer with the chat template it trained with, run.json (how it was made;
secrets are already masked there, and every staged file is checked for the token again), the eval report it is
published with (eval/), and a model card (README.md) built with huggingface_hub's ModelCard: `base_model`,
`datasets`, `library_name: peft`, tags, and model-index results per category from the newest
CHECKPOINT/eval*/report.json (or --report) whose adapter fingerprint is this adapter's. The staged card is parsed
back and the adapter's config loaded with peft before anything is uploaded; then `create_repo` and
`upload_folder`. The token comes from HF_TOKEN or the cached login (`hf auth login`) and never appears in output.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

from eval.io import DistillError, atomic_folder, atomic_write, fill_paragraphs

# What a user of the adapter needs; trainer state, optimizer checkpoints, training_args.bin (a pickle) and TRL's
# template card stay behind.
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "chat_template.json", "added_tokens.json", "vocab.json", "merges.txt", "tokenizer.model")
EVAL_FILES = ("report.json", "summary.md", "accuracy_by_category.png", "errors.png")
BFCL_HUB_ID = "gorilla-llm/Berkeley-Function-Calling-Leaderboard"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
TOKEN_LIKE = re.compile(r"hf_[A-Za-z0-9]{20,}")


def _token() -> str | None:
    """HF_TOKEN, else the token saved by `hf auth login` (huggingface_hub's own lookup)."""
    from huggingface_hub import get_token

    return get_token()


def _scrub(text: str, token: str | None) -> str:
    """An error message from the Hub client, with the token (and anything shaped like one) masked."""
    if token:
        text = text.replace(token, "***")
    return TOKEN_LIKE.sub("hf_***", text)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise DistillError(f"{path}: not valid JSON ({e})") from None


def find_report(checkpoint: Path, report: str | None, fingerprint: str) -> Path | None:
    """The report to publish with: --report, else the newest CHECKPOINT/eval*/report.json. A report that scored
    other adapter weights (or the base model alone) is refused: its numbers are not this adapter's."""
    if report:
        path = Path(report)
        path = path / "report.json" if path.is_dir() else path
        if not path.is_file():
            raise DistillError(f"{path}: no such report")
        candidates = [path]
    else:
        candidates = sorted(checkpoint.glob("eval*/report.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in candidates:
        rep = _read_json(path)
        if rep.get("adapter") is None:
            if report:
                raise DistillError(f"{path}: scores the base model {rep.get('model')!r} without an adapter, not {checkpoint}")
            continue
        if rep.get("adapter_fingerprint") not in (None, fingerprint):
            if report:
                raise DistillError(f"{path}: scores other adapter weights than {checkpoint} (adapter_fingerprint differs); "
                                   f"evaluate this checkpoint with `distill eval --adapter {checkpoint}`")
            print(f"distill publish: skipping {path}: it scores other adapter weights", file=sys.stderr)
            continue
        return path
    return None


def eval_results(report: dict) -> list:
    """model-index entries: accuracy and strict accuracy per category, and over all categories."""
    from huggingface_hub import EvalResult

    version = report.get("data_version") or ""
    bfcl = version.startswith("bfcl-eval")
    dataset_type = BFCL_HUB_ID if bfcl else "custom"
    results = []
    rows = [("all", report)] + list(report["by_category"].items())
    for config, r in rows:
        for key, metric_name in (("accuracy", "accuracy (BFCL AST rules)"),
                                 ("strict_accuracy", "strict accuracy (correct and schema-valid)")):
            results.append(EvalResult(
                task_type="text-generation",
                task_name="Function calling",
                dataset_type=dataset_type,
                dataset_name=("BFCL " if bfcl else "distill tasks ") + (config if config != "all" else "(all categories)"),
                dataset_config=config,
                dataset_split="test",
                dataset_revision=version or None,
                metric_type="accuracy",
                metric_name=metric_name,
                metric_value=r[key],
            ))
    return results


def model_card(repo_id: str, run: dict, report: dict | None, *, base_model: str, datasets: list[str],
               license: str | None, checkpoint: int | None = None) -> str:
    """README.md for the staged folder: YAML metadata (ModelCardData) and a body with usage, provenance and scores.
    `checkpoint`: the step of the Trainer checkpoint published, when it is one (its run may have gone further)."""
    from huggingface_hub import ModelCard, ModelCardData

    stage = run.get("stage")
    tags = ["distill", "function-calling", "tool-use", "lora", "peft", "trl"] + ([stage] if stage else [])
    data = ModelCardData(
        base_model=base_model,
        datasets=datasets or None,
        library_name="peft",
        pipeline_tag="text-generation",
        license=license,
        tags=tags,
        model_name=repo_id.split("/")[-1],
        eval_results=eval_results(report) if report else None,
    )
    ds = run.get("dataset") or {}
    model_cfg = (run.get("config") or {}).get("model") or {}
    libs = run.get("libraries") or {}
    git = run.get("git") or {}
    quant = "QLoRA (4-bit NF4 base)" if model_cfg.get("load_in_4bit") else "LoRA"
    steps = run.get("global_step", "-")
    if checkpoint is not None:  # a checkpoint of a run that may have gone further
        steps = f"{checkpoint} (checkpoint-{checkpoint} of a run of {steps} steps)" if "global_step" in run else checkpoint
    base_ref = f"[`{base_model}`](https://huggingface.co/{base_model})" if HUB_ID.match(base_model) else f"`{base_model}`"
    lines = [
        f"# {repo_id.split('/')[-1]}",
        "",
        f"A function-calling student: a {quant} adapter on {base_ref}, distilled by distill from verified teacher"
        f" traces (chosen answers correct by the Berkeley Function Calling Leaderboard's AST rules and valid against the"
        f" tools' JSON Schemas).",
        "",
        "## Use",
        "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")   # carries the chat template it was trained with',
        f'model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("{base_model}"), "{repo_id}")',
        "```",
        "",
        "## Training",
        "",
        "| | |",
        "| --- | --- |",
        f"| stage | {stage or '-'} |",
        f"| teacher | {('`' + ds['teacher_model'] + '`') if ds.get('teacher_model') else '-'} |",
        f"| preference data | {', '.join(f'`{d}`' for d in datasets) if datasets else ('`' + str(ds.get('path')) + '` (local)' if ds.get('path') else '-')} |",
        f"| rows | {', '.join(f'{k} {v}' for k, v in (ds.get('rows') or {}).items()) or '-'} |",
        f"| steps | {steps} |",
        f"| git commit | {git.get('sha', '-')}{' (with uncommitted changes)' if git.get('dirty') else ''} |",
        f"| libraries | {', '.join(f'{k} {v}' for k, v in libs.items() if v) or '-'} |",
        "",
        "How it was made, in full (resolved recipe, dataset fingerprints, hardware): `run.json`.",
        "",
        "## Evaluation",
        "",
    ]
    if report:
        pct = lambda x: f"{100 * x:.1f}%"  # noqa: E731
        tp = report.get("throughput") or {}
        gen = report.get("generation") or {}
        lines += [
            # the task file's name only: the full path is the publishing machine's business
            f"Scored by distill's verifier on `{Path(str(report.get('tasks'))).name}` ({report.get('tasks_fingerprint')}"
            + (f", {report['data_version']}" if report.get("data_version") else "") + f"), {report['n']} answers"
            + (f", sampling {json.dumps(gen['sampling'])}" if gen.get("sampling") else "") + ". Files: `eval/`.",
            "",
            "| category | n | accuracy | strict accuracy |",
            "| --- | --- | --- | --- |",
            f"| **all** | {report['n']} | {pct(report['accuracy'])} | {pct(report['strict_accuracy'])} |",
        ]
        lines += [f"| {cat} | {c['n']} | {pct(c['accuracy'])} | {pct(c['strict_accuracy'])} |"
                  for cat, c in report["by_category"].items()]
        speed = ""
        if tp.get("latency_p50_s") is not None:
            speed += f"; latency p50 {tp['latency_p50_s']} s, p95 {tp['latency_p95_s']} s"
        if gen.get("completion_tokens_per_s"):
            speed += f"; {gen['completion_tokens_per_s']} tokens/s ({gen['backend']} backend, batch size {gen['batch_size']})"
        lines += ["", f"Schema-valid rate {pct(report['schema_valid_rate'])}, format-valid rate "
                      f"{pct(report['format_valid_rate'])}{speed}."]
    else:
        lines.append("Not evaluated (published with --no-eval).")
    body = "\n".join(lines) + "\n"
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}").content


def stage(checkpoint: str | Path, repo_id: str, *, out: str | Path | None = None, report: str | None = None,
          base_model: str | None = None, dataset_id: str | None = None, license: str | None = None,
          no_eval: bool = False) -> tuple[Path, list[str]]:
    """Build the upload folder; returns (folder, warnings). Nothing is uploaded."""
    from data_gen.local_models import checkpoint_step, run_record_path
    from distill.evaluate import adapter_fingerprint

    ckpt = Path(checkpoint)
    if not ckpt.is_dir():
        raise DistillError(f"{ckpt}: no such checkpoint folder")
    for name in ADAPTER_FILES:
        if not (ckpt / name).is_file():
            raise DistillError(f"{ckpt}: no {name} (expected a training run folder, checkpoints/<run>)")
    if not HUB_ID.match(repo_id):
        raise DistillError(f"--repo-id {repo_id!r} is not a Hub repo id (owner/name)")
    warnings = []
    # a Trainer checkpoint (checkpoint-<step>) holds no run.json: its run's, in the folder around it, says how it was made
    run_path = run_record_path(ckpt)
    run = _read_json(run_path) if run_path else {}
    if not run:
        warnings.append(f"{ckpt}: no run.json (nor one in its run's folder); the card will not say how the adapter "
                        f"was made")
    adapter_cfg = _read_json(ckpt / "adapter_config.json")
    base = base_model or ((run.get("config") or {}).get("model") or {}).get("model_name_or_path") \
        or adapter_cfg.get("base_model_name_or_path")
    if not base:
        raise DistillError(f"{ckpt}: neither run.json nor adapter_config.json names the base model; pass --model")
    if not HUB_ID.match(base) or Path(base).exists():
        warnings.append(f"base model {base!r} is a local folder, not a Hub id: pass --model HUB_ID so users can "
                        f"load the adapter (an upload refuses it)")
    ds_path = (run.get("dataset") or {}).get("path")
    if dataset_id is None and ds_path and HUB_ID.match(ds_path) and not Path(ds_path).exists():
        dataset_id = ds_path  # trained straight from a Hub dataset
    fingerprint = adapter_fingerprint(ckpt)
    report_path = None if no_eval else find_report(ckpt, report, fingerprint)
    if report_path is None and not no_eval:
        raise DistillError(f"{ckpt}: no eval report for this adapter (looked for {ckpt}/eval*/report.json): run "
                           f"`distill eval --adapter {ckpt} --tasks TASKS --out {ckpt}/eval`, pass --report, or --no-eval")
    rep = _read_json(report_path) if report_path else None

    out = Path(out) if out else ckpt / "publish"
    with atomic_folder(out) as tmp:
        for name in ADAPTER_FILES[1:] + TOKENIZER_FILES:
            if (ckpt / name).is_file():
                shutil.copy2(ckpt / name, tmp / name)
        if run_path:
            shutil.copy2(run_path, tmp / "run.json")
        # The staged adapter names the base a user can download (the training run may have used a local copy).
        adapter_cfg["base_model_name_or_path"] = base
        with atomic_write(tmp / "adapter_config.json") as f:
            json.dump(adapter_cfg, f, indent=2)
        if report_path:
            (tmp / "eval").mkdir()
            for name in EVAL_FILES:
                if (report_path.parent / name).is_file():
                    shutil.copy2(report_path.parent / name, tmp / "eval" / name)
        with atomic_write(tmp / "README.md") as f:
            f.write(model_card(repo_id, run, rep, base_model=base, datasets=[dataset_id] if dataset_id else [],
                               license=license, checkpoint=checkpoint_step(ckpt)))
        validate(tmp, expect_results=rep is not None)
    return out, warnings


def validate(folder: Path, *, expect_results: bool) -> None:
    """What the Hub and peft will read, read back: the card's metadata and the adapter config. And no token."""
    from huggingface_hub import ModelCard
    from peft import PeftConfig

    card = ModelCard.load(folder / "README.md")
    if card.data.library_name != "peft" or not card.data.base_model:
        raise DistillError(f"{folder}/README.md: card metadata lacks library_name: peft or base_model")
    if expect_results and not card.data.eval_results:
        raise DistillError(f"{folder}/README.md: card metadata has no eval results")
    try:
        PeftConfig.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError) as e:
        raise DistillError(f"{folder}/adapter_config.json: peft cannot read it ({e})") from None
    token = _token()
    for path in folder.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".md", ".jinja", ".txt"):
            text = path.read_text(encoding="utf-8", errors="replace")
            if (token and token in text) or TOKEN_LIKE.search(text):
                raise DistillError(f"{path}: contains a Hugging Face token; remove it before publishing")


def upload(folder: Path, repo_id: str, *, private: bool = False, repo_type: str = "model",
           commit_message: str = "distill publish") -> str:
    """create_repo (if needed) and upload_folder; returns the commit URL."""
    from huggingface_hub import HfApi

    token = _token()
    if not token:
        raise DistillError("no Hugging Face token: set HF_TOKEN or run `hf auth login`")
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type=repo_type)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type=repo_type,
                                 commit_message=commit_message)
    except Exception as e:  # HTTP, connection and validation errors alike: said once, without the token
        raise DistillError(f"upload to {repo_id} failed: {_scrub(f'{type(e).__name__}: {e}', token)}") from None
    return str(getattr(info, "commit_url", info))


def publish_dataset(pairs_dir: str | Path, repo_id: str, *, private: bool = False, dry_run: bool = False) -> list[str]:
    """Check a `distill pairs` folder (dataset loads, card parses, no token) and push it with its card."""
    from datasets import load_from_disk
    from huggingface_hub import DatasetCard

    from data_gen.pairs import push_pairs

    folder = Path(pairs_dir)
    if not (folder / "dataset").is_dir() or not (folder / "README.md").is_file():
        raise DistillError(f"{folder}: expected a `distill pairs` folder with dataset/ and README.md")
    if not HUB_ID.match(repo_id):
        raise DistillError(f"--repo-id {repo_id!r} is not a Hub repo id (owner/name)")
    dd = load_from_disk(str(folder / "dataset"))
    card = DatasetCard.load(folder / "README.md")
    token = _token()
    if (token and token in card.content) or TOKEN_LIKE.search(card.content):
        raise DistillError(f"{folder}/README.md: contains a Hugging Face token; remove it before publishing")
    lines = [f"{split}: {ds.num_rows} rows" for split, ds in dd.items()]
    if dry_run:
        return lines
    if not token:
        raise DistillError("no Hugging Face token: set HF_TOKEN or run `hf auth login`")
    try:
        push_pairs(folder, repo_id, private=private)
    except Exception as e:
        raise DistillError(f"upload to {repo_id} failed: {_scrub(f'{type(e).__name__}: {e}', token)}") from None
    return lines


def publish_cli(args) -> int:
    if args.dataset:
        if args.checkpoint:
            raise DistillError("give a CHECKPOINT or --dataset PAIRS_DIR, not both")
        lines = publish_dataset(args.dataset, args.repo_id, private=args.private, dry_run=args.dry_run)
        print(f"{args.dataset}: " + ", ".join(lines) + ("; dry run: nothing uploaded" if args.dry_run
                                                          else f" -> https://huggingface.co/datasets/{args.repo_id}"))
        return 0
    if not args.checkpoint:
        raise DistillError("give a CHECKPOINT (a training run folder) or --dataset PAIRS_DIR")
    folder, warnings = stage(args.checkpoint, args.repo_id, out=args.stage_dir, report=args.report,
                             base_model=args.base_model, dataset_id=args.dataset_id, license=args.license,
                             no_eval=args.no_eval)
    for w in warnings:
        print(f"distill publish: warning: {w}", file=sys.stderr)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        print(f"  {path.relative_to(folder)}  {path.stat().st_size:,} bytes")
    if args.dry_run:
        print(f"staged and validated {folder}; dry run: nothing uploaded")
        return 0
    base = _read_json(folder / "adapter_config.json")["base_model_name_or_path"]
    if not HUB_ID.match(base) or Path(base).exists():
        raise DistillError(f"base model {base!r} is a local folder: pass --model HUB_ID (the Hub id it is a copy of)")
    url = upload(folder, args.repo_id, private=args.private,
                 commit_message=f"distill publish {Path(args.checkpoint).resolve().name}")
    print(f"uploaded {folder} -> {url}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "publish",
        help="upload a trained student (adapter, tokenizer, run.json, model card with eval results) or a dataset to the Hub",
        description=fill_paragraphs("Stage a checkpoint for the Hugging Face Hub and upload it: the LoRA adapter, the tokenizer with "
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
    p.add_argument("--model", "--base-model", dest="base_model", default=None,
                   help="Hub id of the base model, for the card and adapter_config.json (default: run.json's "
                   "model_name_or_path); needed when training used a local copy; --base-model is the older spelling")
    p.add_argument("--dataset-id", default=None, help="Hub id of the training data, for the card's `datasets` "
                   "(default: run.json's dataset path when it is a Hub id)")
    p.add_argument("--license", default=None, help="license for the card metadata, e.g. apache-2.0 (default: none given)")
    p.add_argument("--stage-dir", default=None, help="folder to stage into, replaced atomically (default: CHECKPOINT/publish)")
    p.set_defaults(run=publish_cli)
