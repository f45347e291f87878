import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny Llama model + tokenizer with a tool-calling chat template, built once per test session."""
    from tests.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def tiny_pairs_dir(tmp_path_factory):
    """A small preference dataset in distill's format (save_to_disk, train/test, README.md card naming a teacher)."""
    from tests.tiny_pairs import build_tiny_pairs

    return build_tiny_pairs(tmp_path_factory.mktemp("tiny_pairs") / "pairs")
