"""eval.secrets: every way a secret reaches text is scrubbed, and ordinary text (token counts, special tokens,
variable names) is left alone."""

from __future__ import annotations

import logging
import time

import pytest

from eval.secrets import (
    REDACTED,
    ScrubFilter,
    is_secret_name,
    redact_argv,
    redact_mapping,
    register_secret,
    scrub,
)

PLANTED = "plantedKEY-7f3a9c1e55d2"  # no known token shape: found only by value or by context


@pytest.mark.parametrize(
    "name", ["HF_TOKEN", "OPENAI_API_KEY", "hub_token", "push_to_hub_token", "--hub-token", "api_key", "apiKey",
             "clientSecret", "password", "X-Api-Key", "db_passwd"],
)
def test_secret_names(name):
    assert is_secret_name(name)


@pytest.mark.parametrize(
    "name", ["max_new_tokens", "completion_tokens", "pad_token", "eos_token", "api_key_env", "tokenizer_name",
             "keyboard", "monkey", "model", "sample"],
)
def test_not_secret_names(name):
    assert not is_secret_name(name)


def test_env_value_scrubbed_anywhere(monkeypatch):
    monkeypatch.setenv("MY_SERVICE_API_KEY", PLANTED)
    assert scrub(f"HTTP 500: echo {PLANTED}!{PLANTED}") == f"HTTP 500: echo {REDACTED}!{REDACTED}"


def test_value_of_unsecret_variable_needs_registering(monkeypatch):
    monkeypatch.setattr("eval.secrets._registered", set())
    monkeypatch.setenv("LLM_CREDS_VAR", "registered-value-123")  # name says nothing: only registering finds it
    assert "registered-value-123" in scrub("x registered-value-123")
    register_secret("registered-value-123")
    assert scrub("x registered-value-123") == f"x {REDACTED}"


@pytest.mark.parametrize(
    "text",
    [
        f"{{'authorization': 'Bearer {PLANTED}'}}",
        f'{{"headers": {{"Authorization": "Bearer {PLANTED}"}}}}',
        f"Authorization: Basic {PLANTED}",
        f'{{"api_key": "{PLANTED}"}}',
        f"GET /v1/models?api_key={PLANTED}&x=1",
        f"x-api-key: {PLANTED}",
        f"https://user:{PLANTED}@example.com/v1",
        f"hub_token={PLANTED}",
        '{\\"token\\": \\"' + PLANTED + '\\"}',  # JSON inside a JSON string
    ],
)
def test_context_scrubbed(text):
    out = scrub(text)
    assert PLANTED not in out and REDACTED in out


@pytest.mark.parametrize(
    "token", ["hf_" + "a1B2" * 9, "sk-proj-" + "x9" * 12, "ghp_" + "Z" * 36, "AKIAABCDEFGHIJKLMNOP"]
)
def test_token_shapes_scrubbed(token):
    assert scrub(f"failed with {token} in the log") == f"failed with {REDACTED} in the log"


@pytest.mark.parametrize(
    "text",
    ['{"prompt_tokens": 212, "completion_tokens": 23, "max_new_tokens": 51200000}', "token limit exceeded",
     "hf_backend hf_transfer", '"pad_token": "<|endoftext|>"', "https://example.com:8000/v1"],
)
def test_ordinary_text_kept(text):
    assert scrub(text) == text


def test_argv():
    argv = ["distill", "train", "r.yaml", "--hub_token", PLANTED, "--hub-token=" + PLANTED, "--learning_rate",
            "1e-5", "--api_key_env", "MY_KEY", "--pad_token", "<pad>"]
    out = redact_argv(argv)
    assert PLANTED not in " ".join(out)
    assert out == ["distill", "train", "r.yaml", "--hub_token", REDACTED, f"--hub-token={REDACTED}", "--learning_rate",
                   "1e-5", "--api_key_env", "MY_KEY", "--pad_token", "<pad>"]


def test_mapping(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", PLANTED)
    template = "{%- set key = message['content'] %}{{ key }}"  # a chat template: not a secret assignment
    cfg = {"hub_token": PLANTED, "max_new_tokens": 8, "pad_token": "<pad>", "nested": [{"password": "pw12345678"}],
           "api_key_env": "OPENAI_API_KEY", "note": f"copied {PLANTED}", "push_to_hub_token": None,
           "chat_template": template, "repo": "hf_" + "x" * 34}
    out = redact_mapping(cfg)
    assert out == {"hub_token": REDACTED, "max_new_tokens": 8, "pad_token": "<pad>",
                   "nested": [{"password": REDACTED}], "api_key_env": "OPENAI_API_KEY", "note": f"copied {REDACTED}",
                   "push_to_hub_token": None, "chat_template": template, "repo": REDACTED}


def test_logging_filter(monkeypatch, caplog):
    monkeypatch.setenv("SOME_TOKEN", PLANTED)
    logger = logging.getLogger("test_secrets.filter")
    logger.addFilter(ScrubFilter())
    with caplog.at_level(logging.INFO, logger="test_secrets.filter"):
        logger.info("member failed (%s)", f"HTTP 500: {PLANTED}")
    assert PLANTED not in caplog.text and REDACTED in caplog.text


@pytest.mark.parametrize("unit", ["a-", "a", "Bearer ", "token=", "http://a:", '"api_key": "', "a_", "hf_"])
def test_linear_time(unit):
    # A 200 KB adversarial body takes milliseconds; a quadratic pattern would take minutes.
    text = unit * (200_000 // len(unit))
    start = time.perf_counter()
    scrub(text)
    assert time.perf_counter() - start < 2.0
