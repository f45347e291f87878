"""Teacher traces from vLLM's offline engine (optional extra: `pip install 'distill[vllm]'`, Linux + GPU).

    backend = VLLMBackend("Qwen/Qwen2.5-72B-Instruct", sampling=Sampling(temperature=0.7, seed=0),
                          engine_args={"tensor_parallel_size": 4, "max_model_len": 8192})
    async for result in backend.generate(requests): ...
    VLLMBackend("Qwen/Qwen2.5-0.5B-Instruct", sampling=s, adapter="checkpoints/run")   # base + LoRA (LoRARequest)

vLLM is imported only here, when `--backend vllm` is chosen. One engine prompt per task with
`SamplingParams(n=<samples still missing>)`: vLLM shares the prompt's KV cache across the n samples and,
given a seed, gives child i the seed + i, so samples differ and a rerun reproduces. Prompts are rendered by
the model's Hugging Face tokenizer (the same code as the hf backend, `--chat-template` included) and passed as
token ids: the template's text already holds BOS, which vLLM's own tokenization would add a second time.

The engine is called on `batch_size` tasks at a time, so traces reach the file (and survive a crash) in
chunks while vLLM still batches continuously inside each call.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable
from itertools import islice

from data_gen.backends.base import Request, Result, Sampling
from data_gen.prompting import STOP, load_chat_template, render_prompt
from eval.io import DistillError


def group_by_task(requests: Iterable[Request]) -> Iterable[list[Request]]:
    """Consecutive requests of one task, as one group (the generate loop emits a task's samples together)."""
    group: list[Request] = []
    for req in requests:
        if group and req.task_id != group[0].task_id:
            yield group
            group = []
        group.append(req)
    if group:
        yield group


def build_engine_inputs(
    groups: list[list[Request]],
    tokenizer,
    sampling: Sampling,
    make_params: Callable[..., object],
    prompt_style: str = "hermes",
) -> tuple[list[dict], list[object]]:
    """(prompts, sampling params) for LLM.generate: one TokensPrompt-shaped dict and one SamplingParams per
    task group. `make_params` is vllm.SamplingParams (any callable taking its keywords, in tests)."""
    prompts, params = [], []
    for group in groups:
        first = group[0]
        text, completion = render_prompt(tokenizer, first.messages, first.tools, prompt_style)
        ids = tokenizer(text, add_special_tokens=completion)["input_ids"]
        prompts.append({"prompt_token_ids": ids})
        kwargs = dict(
            n=len(group),
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_new_tokens,
            seed=first.seed,
            # Keep special tokens in the text: some models mark calls with them (<|python_tag|>, [TOOL_CALLS]).
            skip_special_tokens=False,
        )
        if completion:
            kwargs["stop"] = [STOP]  # vLLM leaves the stop string out of the text
        params.append(make_params(**kwargs))
    return prompts, params


def results_from_outputs(groups: list[list[Request]], outputs: list, latency_s: float, eos_texts: list[str]):
    """Map vLLM RequestOutputs (input order; `.outputs` sorted by index) back to one Result per request."""
    results = []
    for group, out in zip(groups, outputs, strict=True):
        completions = sorted(out.outputs, key=lambda o: o.index)
        for req, comp in zip(group, completions, strict=True):
            text = comp.text
            for eos in eos_texts:  # an end-of-turn token decoded with skip_special_tokens=False
                if eos and text.endswith(eos):
                    text = text[: -len(eos)]
            results.append(
                Result(
                    req,
                    raw=text,
                    finish_reason=comp.finish_reason,
                    latency_s=latency_s,
                    prompt_tokens=len(out.prompt_token_ids or []),
                    completion_tokens=len(comp.token_ids),
                )
            )
    return results


class VLLMBackend:
    name = "vllm"

    def __init__(
        self,
        model: str,
        *,
        sampling: Sampling,
        batch_size: int = 256,
        chat_template: str | None = None,
        prompt_style: str = "hermes",
        engine_args: dict | None = None,
        adapter: str | None = None,
    ):
        try:
            import vllm
        except ImportError:
            raise DistillError(
                "--backend vllm needs vLLM (Linux with a GPU): pip install 'distill[vllm]'; or serve the model with "
                "`vllm serve` and use --backend openai"
            ) from None
        from transformers import AutoTokenizer

        from data_gen.local_models import resolve_model

        self.model = model
        self.sampling = sampling
        self.batch_size = max(1, batch_size)
        self.prompt_style = prompt_style
        self._vllm = vllm
        engine_args = dict(engine_args or {})
        self.adapter = adapter
        self.lora = None
        path = resolve_model(model)  # a .gguf file or pkg: name -> its converted folder (data_gen.local_models)
        tok_source = path
        if adapter:
            # A LoRA adapter (a student) is applied per request; the engine must be built with LoRA enabled and
            # a max rank at least the adapter's. The run's tokenizer (its training chat template) comes with it.
            import json
            from pathlib import Path

            from vllm.lora.request import LoRARequest

            try:
                rank = json.loads((Path(adapter) / "adapter_config.json").read_text())["r"]
            except (OSError, ValueError, KeyError):
                raise DistillError(f"{adapter}: no readable adapter_config.json with a LoRA rank 'r'") from None
            engine_args.setdefault("enable_lora", True)
            engine_args.setdefault("max_lora_rank", max(16, int(rank)))
            self.lora = LoRARequest("adapter", 1, str(adapter))
            if (Path(adapter) / "tokenizer_config.json").is_file():
                tok_source = adapter
        self.tokenizer = AutoTokenizer.from_pretrained(tok_source, trust_remote_code=engine_args.get("trust_remote_code", False))
        load_chat_template(self.tokenizer, chat_template)
        if sampling.seed is not None:
            engine_args.setdefault("seed", sampling.seed)
        self.llm = vllm.LLM(model=path, **engine_args)
        self.eos_texts = [t for t in {self.tokenizer.eos_token, self.tokenizer.pad_token} if t]

    async def generate(self, requests: Iterable[Request]) -> AsyncIterator[Result]:
        groups = group_by_task(requests)
        while chunk := list(islice(groups, self.batch_size)):
            prompts, params = build_engine_inputs(
                chunk, self.tokenizer, self.sampling, self._vllm.SamplingParams, self.prompt_style
            )
            start = time.perf_counter()
            # Blocks the event loop for the whole chunk; nothing else runs on it.
            outputs = self.llm.generate(prompts, params, use_tqdm=False, lora_request=self.lora)
            latency = round(time.perf_counter() - start, 4)
            for result in results_from_outputs(chunk, outputs, latency, self.eos_texts):
                yield result
