"""Builds a tiny causal LM and tokenizer on disk in about a second, for tests that need a real model.

    from distill.testing.tiny_model import build_tiny_model
    path = build_tiny_model(tmp_path / "tiny")   # a folder that AutoModelForCausalLM/AutoTokenizer load

A Llama config (hidden 64, 2 layers) and a byte-level BPE tokenizer trained in memory, with ChatML special
tokens and distill's Hermes-style tool template (assistant turns in {% generation %}). Llama rather than
Qwen2: transformers 5.x rebuilds a Qwen2Tokenizer on reload and would change the ids.
"""

from __future__ import annotations

import json
from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_CORPUS = [
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>',
    "You are a helpful assistant. You may call one or more functions to assist with the user query.",
    '{"type": "function", "function": {"name": "calculate_area", "description": "Area of a triangle", '
    '"parameters": {"type": "object", "properties": {"base": {"type": "integer"}, "height": {"type": "number"}}, '
    '"required": ["base", "height"]}}}',
    "What's the weather in Paris in celsius? Find the area of a triangle with base 10 and height 5.",
    "The quick brown fox jumps over the lazy dog 0123456789 [](){}<>:;,.'\"-_/\\|!?@#$%^&*+=~`",
]


def build_tiny_model(path: str | Path, *, vocab_size: int = 512, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 20, trainer=trainer)
    from data_gen.prompting import resolve_chat_template

    template = resolve_chat_template("hermes_tool")[0]
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
    )
    fast.chat_template = template
    fast.save_pretrained(path)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = fast.eos_token_id
    model.generation_config.pad_token_id = fast.pad_token_id
    model.save_pretrained(path)
    (path / "distill_tiny.json").write_text(json.dumps({"built_by": "distill/testing/tiny_model.py", "seed": seed}))
    return path
