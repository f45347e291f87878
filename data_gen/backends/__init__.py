"""Teacher backends behind one small interface (data_gen.backends.base.Backend):

- `openai`: any OpenAI-compatible server (openai_backend.OpenAIBackend)
- `hf`: a local transformers model (hf_backend.HFBackend)
- `vllm`: vLLM's offline engine, an optional extra (vllm_backend.VLLMBackend)

Each module is imported only when its backend is chosen (data_gen.generate.build_backend), so choosing
`openai` never imports torch and `hf` never imports vLLM.
"""

from data_gen.backends.base import Backend, Request, Result, Sampling, derive_seed

__all__ = ["Backend", "Request", "Result", "Sampling", "derive_seed"]
