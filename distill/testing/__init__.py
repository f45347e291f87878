"""Small, fast stand-ins for tests and benchmarks: a tiny Qwen2-shaped model built in memory, a tiny preference
dataset, report and trace builders, a fleet whose members' strengths are known by construction, and a stdlib
OpenAI-compatible stub server, a seeded generator of hostile model outputs (fuzz_outputs), and multi-process
launches that show every process's stacks when they hang (processes). Nothing here downloads anything.

    from distill.testing.tiny_model import build_tiny_model
    from distill.testing.openai_stub import StubServer, free_port
"""
