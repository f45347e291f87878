"""`distill publish`: the staged folder loads back with peft, the model card's metadata parses with
huggingface_hub and carries the eval results per category, and the upload path passes the token to
huggingface_hub without ever printing it.

The Hub is unreachable here and no local server speaking its upload API (preupload, commit, LFS/Xet) can be
installed from PyPI (hf-local-hub ships only a client for a Go server with other routes), so the upload is tested
up to huggingface_hub's own calls: HfApi.create_repo and HfApi.upload_folder are replaced by recorders."""

from __future__ import annotations

import json
import shutil

import pytest

from distill.cli import main
from distill.testing.report_builders import build_report, write_tasks

TOKEN = "hf_" + "Zq8" * 12  # shaped like a real token; must appear in no output and no staged file


@pytest.fixture
def checkpoint(tiny_adapter_dir, tmp_path):
    """A copy of the tiny run with an eval report of its adapter in CHECKPOINT/eval (scored by the verifier)."""
    from distill.evaluate import adapter_fingerprint

    ckpt = tmp_path / "tiny-sft"
    shutil.copytree(tiny_adapter_dir, ckpt)
    tasks = write_tasks(tmp_path / "tasks.jsonl", {"simple_python": 10, "irrelevance": 4})
    extra = {"adapter_fingerprint": adapter_fingerprint(ckpt), "data_version": "bfcl-eval==2026.3.23"}
    build_report(ckpt / "eval", tasks, "base", {"simple_python": ["ok"] * 7 + ["wrong_value"] * 3,
                                                "irrelevance": ["ok"] * 3 + ["unexpected_call"]},
                 adapter=str(ckpt), extra=extra)
    return ckpt


@pytest.fixture
def hub_calls(monkeypatch, tmp_path):
    """Record what would go to the Hub; no cached login, the token only in HF_TOKEN."""
    import huggingface_hub
    from huggingface_hub import HfApi

    calls = []
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no_cached_token"))

    def create_repo(self, repo_id, **kw):
        calls.append(("create_repo", repo_id, kw, self.token))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kw):
        files = sorted(str(p.relative_to(kw["folder_path"])) for p in __import__("pathlib").Path(kw["folder_path"]).rglob("*") if p.is_file())
        calls.append(("upload_folder", kw["repo_id"], {**kw, "files": files}, self.token))
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{kw['repo_id']}/commit/abc"})()

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_dry_run_stages_a_loadable_adapter_and_a_card_with_eval_results(checkpoint, tiny_model_dir, hub_calls, capsys):
    rc = main(["publish", str(checkpoint), "--repo-id", "me/tiny-fc", "--dry-run", "--model", "me/tiny-base",
               "--dataset-id", "me/fc-pairs", "--license", "apache-2.0"])
    assert rc == 0 and hub_calls == []  # nothing uploaded
    staged = checkpoint / "publish"
    files = sorted(str(p.relative_to(staged)) for p in staged.rglob("*") if p.is_file())
    assert files == ["README.md", "adapter_config.json", "adapter_model.safetensors", "chat_template.jinja",
                     "eval/report.json", "eval/summary.md", "run.json", "tokenizer.json", "tokenizer_config.json"]
    # training leftovers stay behind; the card is distill's, not TRL's template
    card_text = (staged / "README.md").read_text()
    assert "Model Card for Model ID" not in card_text

    # the adapter loads back with peft onto the base and computes what the checkpoint's adapter computes
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    staged_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(staged))
    original = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(checkpoint))
    ids = torch.tensor([[5, 17, 42, 99]])
    with torch.no_grad():
        assert torch.equal(staged_model(ids).logits, original(ids).logits)
        base_logits = AutoModelForCausalLM.from_pretrained(tiny_model_dir)(ids).logits
    assert not torch.equal(staged_model(ids).logits, base_logits)
    assert json.loads((staged / "adapter_config.json").read_text())["base_model_name_or_path"] == "me/tiny-base"

    # the card's metadata, read back by huggingface_hub
    from huggingface_hub import ModelCard

    card = ModelCard.load(staged / "README.md")
    d = card.data
    assert d.base_model == "me/tiny-base" and d.library_name == "peft" and d.datasets == ["me/fc-pairs"]
    assert d.license == "apache-2.0" and {"distill", "function-calling", "lora", "sft"} <= set(d.tags)
    report = json.loads((checkpoint / "eval" / "report.json").read_text())
    results = {(r.dataset_config, r.metric_name.split(" (")[0]): r.metric_value for r in d.eval_results}
    assert results[("all", "accuracy")] == report["accuracy"]
    for cat, c in report["by_category"].items():
        assert results[(cat, "accuracy")] == c["accuracy"] and results[(cat, "strict accuracy")] == c["strict_accuracy"]
    assert results[("simple_python", "accuracy")] == 0.7 and results[("irrelevance", "accuracy")] == 0.75
    r0 = d.eval_results[0]
    assert r0.dataset_type == "gorilla-llm/Berkeley-Function-Calling-Leaderboard" and r0.dataset_revision == "bfcl-eval==2026.3.23"
    # the body shows the same numbers, and how it was trained
    assert "| simple_python | 10 | 70.0% | 70.0% |" in card.text and "Qwen/Qwen2.5-72B-Instruct" in card.text
    assert "staged and validated" in capsys.readouterr().out


def test_a_checkpoint_publishes_with_its_runs_record(tiny_adapter_dir, tmp_path, hub_calls, capsys):
    """A Trainer checkpoint (checkpoint-<step>) holds no run.json: the run's, in the folder around it, goes into the
    staged folder, and the card says which step of the run was published."""
    from distill.evaluate import adapter_fingerprint

    run = tmp_path / "tiny-dpo"
    ckpt = run / "checkpoint-3"
    shutil.copytree(tiny_adapter_dir, ckpt)
    (ckpt / "run.json").rename(run / "run.json")
    tasks = write_tasks(tmp_path / "tasks.jsonl", {"simple_python": 4})
    build_report(ckpt / "eval", tasks, "base", {"simple_python": ["ok"] * 4}, adapter=str(ckpt),
                 extra={"adapter_fingerprint": adapter_fingerprint(ckpt)})
    assert main(["publish", str(ckpt), "--repo-id", "me/tiny-fc", "--dry-run", "--model", "me/tiny-base"]) == 0
    assert "no run.json" not in capsys.readouterr().err
    staged = ckpt / "publish"
    assert (staged / "run.json").read_bytes() == (run / "run.json").read_bytes()
    card = (staged / "README.md").read_text()
    assert "| steps | 3 (checkpoint-3 of a run of 8 steps) |" in card and "| stage | sft |" in card


def test_newest_report_of_this_adapter_is_chosen(checkpoint, hub_calls, tmp_path, capsys):
    import os
    import time

    report = json.loads((checkpoint / "eval" / "report.json").read_text())
    tasks = report["tasks"]
    newer = build_report(checkpoint / "eval_newer", tasks, "base", {"simple_python": ["ok"] * 10, "irrelevance": ["ok"] * 4},
                         adapter=str(checkpoint), extra={"adapter_fingerprint": report["adapter_fingerprint"]})
    # a still newer report of other adapter weights (the folder was retrained since) must be skipped
    stale = build_report(checkpoint / "eval_stale", tasks, "base", {"simple_python": ["ok"] * 10, "irrelevance": ["ok"] * 4},
                         adapter=str(checkpoint), extra={"adapter_fingerprint": "sha256:" + "0" * 64})
    now = time.time()
    os.utime(checkpoint / "eval" / "report.json", (now - 20, now - 20))
    os.utime(newer / "report.json", (now - 10, now - 10))
    os.utime(stale / "report.json", (now, now))
    assert main(["publish", str(checkpoint), "--repo-id", "me/x", "--dry-run"]) == 0
    staged = json.loads((checkpoint / "publish" / "eval" / "report.json").read_text())
    assert staged["accuracy"] == 1.0
    captured = capsys.readouterr()
    assert "skipping" in captured.err and "eval_stale" in captured.err
    # the local base is named as a warning in a dry run ...
    assert "is a local folder, not a Hub id" in captured.err
    # ... and an explicit --report of other weights is an error
    assert main(["publish", str(checkpoint), "--repo-id", "me/x", "--dry-run", "--report", str(stale)]) == 2
    assert "scores other adapter weights" in capsys.readouterr().err
    # no report at all: refused unless --no-eval
    for d in ("eval", "eval_newer", "eval_stale"):
        shutil.rmtree(checkpoint / d)
    assert main(["publish", str(checkpoint), "--repo-id", "me/x", "--dry-run"]) == 2
    assert "no eval report for this adapter" in capsys.readouterr().err
    assert main(["publish", str(checkpoint), "--repo-id", "me/x", "--dry-run", "--no-eval"]) == 0
    from huggingface_hub import ModelCard

    assert not ModelCard.load(checkpoint / "publish" / "README.md").data.eval_results


def test_upload_creates_the_repo_and_uploads_the_staged_folder_token_never_printed(checkpoint, hub_calls, capsys):
    rc = main(["publish", str(checkpoint), "--repo-id", "me/tiny-fc", "--private", "--base-model", "me/tiny-base"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    (create, repo, kw, token), (upload, repo2, ukw, token2) = hub_calls
    assert (create, repo, upload, repo2) == ("create_repo", "me/tiny-fc", "upload_folder", "me/tiny-fc")
    assert kw["private"] is True and kw["exist_ok"] is True and kw["repo_type"] == "model"
    assert ukw["folder_path"] == str(checkpoint / "publish") and "README.md" in ukw["files"]
    assert ukw["commit_message"] == "distill publish tiny-sft"
    assert "training_args.bin" not in ukw["files"]
    assert token == token2 == TOKEN  # the token from HF_TOKEN reached huggingface_hub ...
    assert TOKEN not in out.out + out.err  # ... and nothing printed it
    for p in (checkpoint / "publish").rglob("*"):
        assert not p.is_file() or TOKEN.encode() not in p.read_bytes()
    assert "https://huggingface.co/me/tiny-fc/commit/abc" in out.out


def test_upload_refusals_and_errors_without_the_token(checkpoint, hub_calls, monkeypatch, capsys):
    # a base model that is a local folder cannot be named on the Hub: refused before any request
    assert main(["publish", str(checkpoint), "--repo-id", "me/tiny-fc"]) == 2
    assert "pass --model" in capsys.readouterr().err and hub_calls == []
    # the Hub's error message may echo the request; the token is masked
    from huggingface_hub import HfApi

    def failing_upload(self, **kw):
        raise RuntimeError(f"403 Forbidden: Authorization: Bearer {self.token} cannot write to {kw['repo_id']}")

    monkeypatch.setattr(HfApi, "upload_folder", failing_upload)
    assert main(["publish", str(checkpoint), "--repo-id", "me/tiny-fc", "--base-model", "me/b"]) == 2
    err = capsys.readouterr().err
    assert "upload to me/tiny-fc failed: RuntimeError: 403 Forbidden" in err and TOKEN not in err and "***" in err
    # no token anywhere: a clear error, no request
    monkeypatch.delenv("HF_TOKEN")
    hub_calls.clear()
    assert main(["publish", str(checkpoint), "--repo-id", "me/tiny-fc", "--base-model", "me/b"]) == 2
    assert "no Hugging Face token: set HF_TOKEN" in capsys.readouterr().err and hub_calls == []
    # a token that found its way into run.json stops the staging, and the old staged folder stays as it was
    run = json.loads((checkpoint / "run.json").read_text())
    run["config"]["training"]["hub_token"] = "hf_" + "A1" * 15
    (checkpoint / "run.json").write_text(json.dumps(run))
    before = sorted(p.name for p in (checkpoint / "publish").iterdir())
    assert main(["publish", str(checkpoint), "--repo-id", "me/tiny-fc", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "run.json: contains a Hugging Face token" in err and "A1A1" not in err
    assert sorted(p.name for p in (checkpoint / "publish").iterdir()) == before
    assert not [p for p in checkpoint.iterdir() if p.name.startswith(".publish")]  # no temporary folder left


@pytest.fixture
def pairs_dir(tmp_path):
    """A real `distill pairs` output folder (dataset/, train.jsonl, test.jsonl, README.md card)."""
    from data_gen.pairs import PairsConfig, pairs
    from distill.testing.report_builders import write_traces

    tasks = write_tasks(tmp_path / "pair_tasks.jsonl", {"simple_python": 8})
    traces = write_traces(tmp_path / "teacher.jsonl", "Qwen/Qwen2.5-72B-Instruct", {"simple_python": ["ok"] * 6 + ["wrong_value"] * 2})
    pairs(str(tasks), [str(traces)], str(tmp_path / "pairs"), config=PairsConfig(test_size=0.25, chosen_from="teacher-or-gold"))
    return tmp_path / "pairs"


def test_publish_dataset_with_its_card(pairs_dir, hub_calls, monkeypatch, capsys):
    from datasets import DatasetDict
    from huggingface_hub import DatasetCard

    rows = {s: len((pairs_dir / f"{s}.jsonl").read_text().splitlines()) for s in ("train", "test")}

    pushed = []
    monkeypatch.setattr(DatasetDict, "push_to_hub", lambda self, repo, **kw: pushed.append(("data", repo, kw, sorted(self))))
    monkeypatch.setattr(DatasetCard, "push_to_hub", lambda self, repo, **kw: pushed.append(("card", repo, kw, self.data.to_dict())))
    assert main(["publish", "--dataset", str(pairs_dir), "--repo-id", "me/fc-pairs", "--dry-run"]) == 0
    assert pushed == [] and f"train: {rows['train']} rows, test: {rows['test']} rows" in capsys.readouterr().out
    assert main(["publish", "--dataset", str(pairs_dir), "--repo-id", "me/fc-pairs", "--private"]) == 0
    out = capsys.readouterr()
    (kind, repo, kw, splits), (kind2, repo2, kw2, meta) = pushed
    assert (kind, repo, kind2, repo2) == ("data", "me/fc-pairs", "card", "me/fc-pairs")
    assert kw["private"] is True and kw["token"] == TOKEN and splits == ["test", "train"]
    assert "function-calling" in meta["tags"]  # the card written by `distill pairs`, as it is
    assert TOKEN not in out.out + out.err
    assert main(["publish", "--dataset", str(pairs_dir / "dataset"), "--repo-id", "me/x"]) == 2
    assert "expected a `distill pairs` folder" in capsys.readouterr().err
