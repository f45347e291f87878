"""Train one stage of a student, QLoRA SFT, DPO or GRPO, from a recipe (see recipes/README.md).

    accelerate launch -m distill.train recipes/qwen2.5-0.5b-instruct/sft.yaml
    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml -m distill.train recipes/qwen2.5-0.5b-instruct/dpo.yaml
    distill train recipes/debug/tiny_cpu.yaml --max_steps 4        # one process; flags override the file
    distill train --chain recipes/qwen2.5-0.5b-instruct/sft.yaml recipes/qwen2.5-0.5b-instruct/dpo.yaml
    python -m distill.train --list-keys dpo                         # every key a dpo recipe accepts

Order: seed, logging, resume detection, pre-flight (tokenizer, chat template, data, token-length audit; all
before any weight loads), model, trainer, train, eval, save. checkpoints/<run>/ ends up holding the adapter,
the tokenizer with the chat template it trained with, run.json, trainer_state.json, train_results.json, the
TensorBoard logs (runs/) and the last checkpoint-<step>/ folders, from which a rerun resumes.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from eval.io import DistillError

logger = logging.getLogger("distill.train")

USAGE = """\
usage: distill train RECIPE.yaml [--key value ...]
       distill train --config RECIPE.yaml [--key value ...]
       distill train --chain SFT.yaml DPO.yaml [--key value ...]
       distill train --list-keys sft|dpo|grpo

Train one stage (stage: sft, dpo or grpo) of a student from a YAML recipe, with QLoRA, under `accelerate launch -m
distill.train ...` or in one process. Keys: distill's (stage, dataset_path, init_adapter, chat_template,
sft_format, max_truncated_share, audit_max_rows, resume) plus every field of TRL's SFTConfig or DPOConfig and
ModelConfig; unknown keys are errors. `--key value` flags override the file. A run resumes from the last
checkpoint in its output_dir. With --chain, each later recipe starts from the adapter the one before saved
(its init_adapter), and the same flags apply to every stage.

examples:
  distill train recipes/debug/tiny_cpu.yaml
  distill train --chain recipes/qwen2.5-0.5b-instruct/sft.yaml recipes/qwen2.5-0.5b-instruct/dpo.yaml
  accelerate launch --config_file recipes/accelerate/multi_gpu.yaml -m distill.train recipes/qwen3-1.7b/sft.yaml
  distill train recipes/qwen3-1.7b/dpo.yaml --learning_rate 1e-5 --output_dir checkpoints/qwen3-dpo-lr1e5"""


def run_stage(recipe, *, end: bool = True):
    """Train one parsed recipe; returns the trainer. `end` releases trackers and the process group (once, at
    the end of the last stage: a chained stage after it needs them)."""
    import datasets
    import transformers
    from transformers import AutoTokenizer, set_seed
    from trl import DPOTrainer, SFTTrainer

    from data_gen.local_models import resolve_model
    from distill import modeling, preflight, run_info, train_data
    from distill.recipe import resolve_chat_template

    s, t, m = recipe.script, recipe.training, recipe.model

    set_seed(t.seed)

    level = logging.INFO if t.should_log else logging.WARNING
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=level)
    logging.getLogger("distill").setLevel(level)
    # transformers at INFO prints every config it loads; its warnings and the Trainer's progress still show.
    transformers.utils.logging.set_verbosity(logging.WARNING)
    datasets.utils.logging.set_verbosity(logging.WARNING)

    finished_at_step = _finished_step(t.output_dir)
    if s.resume and finished_at_step is not None and (t.max_steps <= 0 or finished_at_step >= t.max_steps):
        # Resuming from a checkpoint at the last step trains one step too many (transformers 5.24), and a rerun
        # of a chain after a crash in DPO should go straight to DPO.
        logger.warning(
            "%s already holds a finished %s run (step %d): nothing to train; remove the folder or set "
            "another output_dir to train again",
            t.output_dir,
            s.stage,
            finished_at_step,
        )
        return None
    resumed_from, resumed_at = t.resume_from_checkpoint, None
    if resumed_from is None and s.resume:
        resumed_from, resumed_at = last_complete_checkpoint(t.output_dir)
    if resumed_from:
        logger.info("resuming from %s at step %s", resumed_from, resumed_at)

    # A .gguf file or pkg: name loads from its converted folder (data_gen.local_models); run.json keeps the name.
    model_path = resolve_model(m.model_name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(
        model_path, revision=m.model_revision, trust_remote_code=t.trust_remote_code
    )
    source = f"{m.model_name_or_path} (its own chat template)"
    if s.chat_template:
        tokenizer.chat_template, source = resolve_chat_template(s.chat_template)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    stop_ids = preflight.stop_token_ids(tokenizer, model_path, m.model_revision)
    preflight.check_chat_template(tokenizer, source=source, stop_ids=stop_ids)
    if s.stage == "grpo":  # a tasks file: prompt rows rendered with this tokenizer (distill.grpo)
        from distill import grpo

        grpo_tasks, rows, audit = grpo.prepare_data(s.dataset_path, tokenizer)
        data = rows
    else:
        data = train_data.load_pairs(s.dataset_path)
        splits = {"train": s.dataset_train_split}
        if t.eval_strategy != "no":
            splits["eval"] = s.dataset_test_split
        sft_rows: dict = {}  # how SFT chose its rows from the pairs (train_data.sft_selection), for run.json
        rows = {
            key: train_data.for_stage(
                train_data.get_split(data, name, s.dataset_path), s.stage, s.sft_format, name,
                # the no-call share is set on the training rows; evaluation keeps the natural mix
                no_call_share=s.sft_no_call_share if key == "train" else None,
                seed=t.seed,
                composition=sft_rows.setdefault(key, {}) if s.stage == "sft" else None,
            )
            for key, name in splits.items()
        }
        audit = preflight.audit_lengths(
            rows["train"],
            tokenizer,
            stage=s.stage,
            max_length=t.max_length,
            truncation_mode=t.truncation_mode,
            max_truncated_share=s.max_truncated_share,
            max_rows=s.audit_max_rows,
            split=s.dataset_train_split,
        )

    model, peft_config = modeling.load_student(m, t, init_adapter=s.init_adapter)

    if s.stage == "sft":
        trainer_cls = SFTTrainer
    elif s.stage == "grpo":  # TRL's GRPOTrainer with the verifier's reward functions
        trainer_cls = grpo.trainer_factory(grpo_tasks, stop_ids)
    elif t.fast:  # same loss as DPOTrainer: prompt once per pair, packed rows, cached reference (distill.fast_dpo)
        from distill.fast_dpo import FastDPOTrainer

        trainer_cls = FastDPOTrainer
    else:
        trainer_cls = DPOTrainer
    throughput = run_info.ThroughputCallback()
    callbacks, guard = [throughput], None
    if s.stage == "dpo" and s.logps_guard_nats is not None:
        # TRL logs logps/chosen but ships no guard against its collapse (distill/callbacks.py says why it matters);
        # with beta, the guard reads the chosen answers' log-ratio to the reference on the same batch
        from distill.callbacks import LogpsGuard

        guard = LogpsGuard(s.logps_guard_nats, stop=s.logps_guard_stop, beta=t.beta)
        callbacks.append(guard)
    run_info.keep_hub_token_out_of_checkpoints(t)  # training_args.bin would hold it otherwise
    trainer = trainer_cls(
        model=model,
        args=t,
        train_dataset=rows["train"],
        eval_dataset=rows.get("eval"),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    info = run_info.start_info(recipe, data, audit=audit, resumed_from=resumed_from)
    info["resumed_at_step"] = resumed_at
    if s.stage == "sft":
        info["sft_rows"] = sft_rows
    if s.stage == "grpo":
        info["dataset"]["tasks"] = grpo.tasks_info(s.dataset_path, grpo_tasks)
        info["reward"] = trainer.verifier_reward.spec.to_dict()
    if trainer.is_world_process_zero():
        run_info.write_run_info(t.output_dir, info)

    result = trainer.train(resume_from_checkpoint=resumed_from)
    metrics = dict(result.metrics)
    if "eval" in rows:  # before the save, which drops DPO's reference adapter that evaluation still needs
        metrics.update(trainer.evaluate())

    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    if "ref" in getattr(unwrapped, "peft_config", {}):
        # DPO from an SFT adapter trains "default" against a frozen copy named "ref"; only "default" is the result.
        unwrapped.delete_adapter("ref")
    trainer.save_model(t.output_dir)
    trainer.save_state()
    trainer.save_metrics("all", metrics)
    if s.stage == "grpo":  # the configuration plus what this process's reward scored, how fast, which errors
        info["reward"] = trainer.verifier_reward.summary()
    if trainer.is_world_process_zero():
        info.update(
            status="finished",
            global_step=trainer.state.global_step,
            metrics=metrics,
            throughput=throughput.summary(),
            logps_guard=guard.summary() if guard else None,
            finished_at=run_info.now(),
        )
        run_info.write_run_info(t.output_dir, info)
        logger.info("saved %s adapter, tokenizer and run.json to %s", s.stage, t.output_dir)
    if end and hasattr(trainer, "end"):  # Trainer.end() arrived in transformers 5.18
        # Every process reaches the same point before the process group is destroyed: rank 0 is still writing
        # run.json when the others arrive, and a rank that destroys the group early can leave the launch hanging at
        # exit (pytorch/pytorch#75097 advises this barrier). A no-op in one process.
        trainer.accelerator.wait_for_everyone()
        trainer.end()
    return trainer


def last_complete_checkpoint(output_dir: str) -> tuple[str | None, int | None]:
    """(folder, step) of the newest checkpoint-<step> whose trainer_state.json, the file the Trainer writes last,
    is whole. A run killed while writing a checkpoint leaves a partial folder, which transformers'
    get_last_checkpoint would pick and then fail to load."""
    folders = sorted(
        Path(output_dir).glob("checkpoint-*"),
        key=lambda p: int(p.name.split("-")[-1]) if p.name.split("-")[-1].isdigit() else -1,
        reverse=True,
    )
    for folder in folders:
        try:
            return str(folder), json.loads((folder / "trainer_state.json").read_text())["global_step"]
        except (OSError, ValueError, KeyError):
            logger.warning("skipping %s: incomplete (killed while it was written?)", folder)
    return None, None


def _finished_step(output_dir: str) -> int | None:
    """The step a finished run in output_dir stopped at (from its run.json), or None."""
    try:
        info = json.loads((Path(output_dir) / "run.json").read_text())
    except (OSError, ValueError):
        return None
    if info.get("status") != "finished":
        return None
    if ((info.get("logps_guard") or {}).get("tripped") or {}).get("stopped"):
        # The guard ended this run on purpose: resuming would train on into the same collapse.
        return max(info.get("global_step") or 0, info.get("config", {}).get("training", {}).get("max_steps") or 0)
    return info.get("global_step")


def main(argv: list[str] | None = None) -> int:
    from distill.recipe import STAGES, make_parser, parse_recipe

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] == "--list-keys":
        stage = argv[1] if len(argv) > 1 else "sft"
        if stage not in STAGES:
            raise DistillError(f"--list-keys: unknown stage {stage!r} (one of {', '.join(STAGES)})")
        make_parser(stage, prog=f"keys of a stage: {stage} recipe (YAML key: value, or --key value)").print_help()
        return 0
    if argv[0] == "--config":  # `--config RECIPE.yaml`, as `trl sft --config` takes it
        argv = argv[1:]
    chain = "--chain" in argv
    if chain:
        argv.remove("--chain")
    first_flag = next((i for i, a in enumerate(argv) if a.startswith("-")), len(argv))
    paths, overrides = argv[:first_flag], argv[first_flag:]
    if chain and len(paths) < 2:
        raise DistillError("--chain takes two or more recipes (e.g. sft.yaml dpo.yaml)")
    if not chain and len(paths) != 1:
        raise DistillError(
            f"expected one recipe, got {len(paths)} ({' '.join(paths) or 'none'}); "
            "use --chain to train several stages in a row"
        )
    per_stage = {"--output_dir", "--output-dir", "--init_adapter", "--init-adapter"}
    if chain and any(o.split("=")[0] in per_stage for o in overrides):
        raise DistillError(
            "--output_dir and --init_adapter differ per stage: set them in each recipe, not as "
            "flags with --chain"
        )

    # Parse every recipe before the first trains, so a typo in the DPO recipe does not wait for SFT to finish.
    recipes = [parse_recipe([paths[0], *overrides])]
    for path in paths[1:]:
        recipes.append(parse_recipe([path, *overrides, "--init_adapter", recipes[-1].training.output_dir]))
    for i, recipe in enumerate(recipes):
        run_stage(recipe, end=i == len(recipes) - 1)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train one stage of a student (QLoRA SFT, DPO or GRPO) from a YAML recipe",
        description="Train one stage of a student (stage: sft, dpo or grpo) from a YAML recipe with QLoRA: the same as "
        "`accelerate launch -m distill.train RECIPE.yaml`, in one process. Recipe keys are distill's (stage, "
        "dataset_path, init_adapter, chat_template, sft_format, max_truncated_share, audit_max_rows, resume) and "
        "every field of TRL's SFTConfig/DPOConfig/GRPOConfig and ModelConfig (`python -m distill.train --list-keys "
        "sft|dpo|grpo` "
        "lists them); unknown keys are errors. Flags after the recipe (--key value) override the file. The run "
        "writes checkpoints/<run>/ (adapter, tokenizer, run.json, trainer logs) and resumes from its last "
        "checkpoint when rerun.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,
        epilog="examples:\n"
        "  distill train recipes/debug/tiny_cpu.yaml --max_steps 4\n"
        "  distill train --chain recipes/qwen2.5-0.5b-instruct/sft.yaml recipes/qwen2.5-0.5b-instruct/dpo.yaml\n"
        "  accelerate launch --config_file recipes/accelerate/multi_gpu.yaml -m distill.train recipes/qwen3-1.7b/sft.yaml\n"
        "runbook: recipes/README.md",
    )
    # The arguments after `train` go to `main` untouched: recipe overrides are TRL's own `--key value` flags,
    # which only TRL's parser knows (see USAGE for the forms).
    p.set_defaults(run=main, raw_argv=True)


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except DistillError as e:
        print(f"distill train: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
