"""Teacher (or student) traces from a local transformers model: batched, left-padded `generate`.

    backend = HFBackend("Qwen/Qwen2.5-7B-Instruct", sampling=Sampling(temperature=0.7, seed=0), batch_size=16)
    async for result in backend.generate(requests): ...
    HFBackend("Qwen/Qwen2.5-0.5B-Instruct", sampling=s, adapter="checkpoints/run")   # a student: base + LoRA (peft)

The prompt is the model's chat template rendered with the task's `tools` (`--chat-template` replaces it); a
base model without a template gets the few-shot completion prompt of data_gen.prompting. Left padding, so
every row of a batch ends at its prompt's last token and generation continues from there.

Per-row seeds do not exist in one batched `generate` (the batch shares one RNG), so with a seed each batch is
seeded from its first request's seed: an uninterrupted run reproduces exactly, a resumed one batches the
remaining requests differently. `latency_s` is the batch's wall time, shared by its rows.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable
from itertools import islice
from pathlib import Path

from data_gen.backends.base import Request, Result, Sampling
from data_gen.local_models import resolve_model
from data_gen.prompting import STOP, cut_at_stop, load_chat_template, render_prompt
from eval.io import DistillError

DTYPES = ("auto", "bfloat16", "float16", "float32")


def pick_device(device: str = "auto") -> str:
    """'auto' -> cuda, else mps, else cpu; anything else is passed through ('cuda:1', 'cpu', ...)."""
    import torch

    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


class HFBackend:
    name = "hf"

    def __init__(
        self,
        model: str,
        *,
        sampling: Sampling,
        batch_size: int = 8,
        device: str = "auto",
        dtype: str = "auto",
        chat_template: str | None = None,
        prompt_style: str = "hermes",
        trust_remote_code: bool = False,
        adapter: str | None = None,
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model = model
        self.sampling = sampling
        self.batch_size = max(1, batch_size)
        self.prompt_style = prompt_style
        self.device = pick_device(device)
        if dtype not in DTYPES:
            raise DistillError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.adapter = adapter
        # A training run saves the tokenizer with the chat template it trained with beside its adapter: a
        # student is evaluated with that template, not the base model's.
        # A .gguf file or pkg: name loads from its converted folder (data_gen.local_models); traces keep the name.
        path = resolve_model(model)
        tok_source = adapter if adapter and (Path(adapter) / "tokenizer_config.json").is_file() else path
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(tok_source, trust_remote_code=trust_remote_code)
            torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
            self.lm = AutoModelForCausalLM.from_pretrained(
                path, dtype=torch_dtype, trust_remote_code=trust_remote_code
            )
        except OSError as e:  # not a folder with a model, not on the Hub, or offline without a cached copy
            raise DistillError(f"cannot load model {model!r}: {e}") from None
        if adapter:
            from peft import PeftModel

            if not (Path(adapter) / "adapter_config.json").is_file():
                raise DistillError(f"{adapter}: no adapter_config.json (expected a LoRA adapter folder)")
            self.lm = PeftModel.from_pretrained(self.lm, adapter)
            # float32 weights: fold the adapter in, so that generation runs the base model's kernels alone rather
            # than two extra small matmuls per adapted layer and decoding step (exact up to float rounding;
            # tests/test_evaluate.py compares logits). Not in bf16/fp16, whose 8-10 bit mantissa would round
            # away much of a LoRA update that is ~1e-3 of the weight it is added to.
            if all(p.dtype == torch.float32 for p in self.lm.parameters()):
                self.lm = self.lm.merge_and_unload()
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        load_chat_template(self.tokenizer, chat_template)
        self.lm.to(self.device).eval()
        eos = self.lm.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if self.tokenizer.eos_token_id is not None:
            eos.append(self.tokenizer.eos_token_id)
        self.eos_ids = set(eos)

    async def generate(self, requests: Iterable[Request]) -> AsyncIterator[Result]:
        # generate() blocks the event loop; nothing else runs on it, and Ctrl-C still lands between batches.
        todo = iter(requests)
        while batch := list(islice(todo, self.batch_size)):
            for result in self.generate_batch(batch):
                yield result

    def generate_batch(self, batch: list[Request]) -> list[Result]:
        import torch

        rendered = [render_prompt(self.tokenizer, r.messages, r.tools, self.prompt_style) for r in batch]
        completion = rendered[0][1]
        enc = self.tokenizer(
            [text for text, _ in rendered], return_tensors="pt", padding=True, add_special_tokens=completion
        ).to(self.device)
        s = self.sampling
        kwargs = dict(max_new_tokens=s.max_new_tokens, pad_token_id=self.tokenizer.pad_token_id)
        if s.temperature > 0:
            kwargs.update(do_sample=True, temperature=s.temperature, top_p=s.top_p)
        else:
            kwargs.update(do_sample=False)
        if completion:
            kwargs.update(stop_strings=[STOP], tokenizer=self.tokenizer)
        if batch[0].seed is not None:
            torch.manual_seed(batch[0].seed)
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.lm.generate(**enc, **kwargs)
        latency = round(time.perf_counter() - start, 4)
        prompt_len = enc["input_ids"].shape[1]
        prompt_tokens = enc["attention_mask"].sum(dim=1).tolist()
        results = []
        for i, req in enumerate(batch):
            ids = out[i, prompt_len:].tolist()
            finish = "length"
            for j, tok in enumerate(ids):
                if tok in self.eos_ids:
                    ids, finish = ids[:j], "stop"
                    n_completion = j + 1  # the end-of-turn token was generated too
                    break
            else:
                n_completion = len(ids)
            # Special tokens stay: some models mark calls with them (<|python_tag|>, [TOOL_CALLS]).
            text = self.tokenizer.decode(ids, skip_special_tokens=False)
            if completion:
                text, stopped = cut_at_stop(text)
                finish = "stop" if stopped else finish
            results.append(
                Result(
                    req,
                    raw=text,
                    finish_reason=finish,
                    latency_s=latency,
                    prompt_tokens=int(prompt_tokens[i]),
                    completion_tokens=n_completion,
                )
            )
        return results
