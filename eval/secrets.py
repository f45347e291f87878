"""Keep secrets out of every message, log line and record distill writes.

    scrub("HTTP 500: {'authorization': 'Bearer sk-live-0123456789abcdef'}")
    -> "HTTP 500: {'authorization': '<redacted>'}"
    redact_argv(["train", "r.yaml", "--hub_token", "hf_...", "--learning_rate", "1e-5"])
    -> ["train", "r.yaml", "--hub_token", "<redacted>", "--learning_rate", "1e-5"]
    redact_mapping({"api_key": "abc", "max_new_tokens": 8, "pad_token": "<pad>"})
    -> {"api_key": "<redacted>", "max_new_tokens": 8, "pad_token": "<pad>"}

Free text (error bodies, log lines) goes through `scrub`; the values of configs and command lines through
`redact_mapping`/`redact_argv`, which replace the values of secret-named keys and flags and otherwise only what
is a secret by value or by shape (a chat template's `set key = ...` is not a secret).

A secret is found three ways, and `scrub` applies all of them to free text before it is printed, logged, returned
to a client or written to a file:
- by value: the values of environment variables whose names say they hold a secret (HF_TOKEN, OPENAI_API_KEY,
  *_KEY, *_TOKEN, *_SECRET, *_PASSWORD) and values handed to `register_secret` (e.g. the variable named by
  `--api-key-env`), wherever they appear, so a server that echoes the request headers back cannot leak the key;
- by context: the credential after `Bearer`/`Basic`, the value of an `Authorization`/`x-api-key` header, the value
  after a secret-named key (`"api_key": "..."`, `token=...`) and the password in a URL (`https://user:pw@host`);
- by shape: well-known token formats (Hugging Face `hf_...`, OpenAI `sk-...`, GitHub, Slack, AWS, Google).

Every pattern is linear-time (no nested or overlapping repetition), so scrubbing a long error body is cheap.
Hand-written: the secret scanners on PyPI (detect-secrets and the like) scan repositories and report findings;
none rewrites text in place, and none knows this process's own keys.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping

REDACTED = "<redacted>"
# Shorter values are not treated as secrets by value: replacing every "1" or "abc" would garble messages.
MIN_SECRET_LEN = 8

# Words that make a key name a secret's name (matched as whole words of the name: `hub_token`, `apiKey`,
# `X-Api-Key`, `password`), and names that contain such a word but hold no secret: a tokenizer's special tokens,
# and `*_env` keys, which name the environment variable holding a key rather than the key itself.
_SECRET_WORDS = {"token", "key", "apikey", "secret", "password", "passwd", "pwd", "credential", "credentials", "auth"}
_NOT_SECRET_NAMES = {f"{t}_token" for t in ("pad", "eos", "bos", "unk", "sep", "cls", "mask")}
_NOT_SECRET_LAST_WORDS = {"env"}

_registered: set[str] = set()

_TOKEN_SHAPES = re.compile(
    r"\bhf_[A-Za-z0-9]{30,}"  # Hugging Face
    r"|\bsk-[A-Za-z0-9_-]{20,}"  # OpenAI and OpenAI-style keys (sk-proj-..., sk-ant-...)
    r"|\bgh[pousr]_[A-Za-z0-9]{30,}|\bgithub_pat_[A-Za-z0-9_]{30,}"  # GitHub
    r"|\bxox[abporst]-[A-Za-z0-9-]{10,}"  # Slack
    r"|\bAKIA[0-9A-Z]{16}\b"  # AWS access key id
    r"|\bAIza[0-9A-Za-z_-]{35}"  # Google API key
)
# `Bearer <credential>` / `Basic <credential>` anywhere (headers echoed in a body, exception texts).
_AUTH_SCHEME = re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=-]+")
# The value of an auth header or of a secret-named key, in JSON, Python reprs, headers and query strings:
# `"authorization": "..."`, `'x-api-key': '...'`, `api_key=...`, `"hub_token": "..."`. The name is one word run
# starting at a word boundary, so the scan from each start stays inside that word (linear time).
_SECRET_ASSIGNMENT = re.compile(
    r"(?i)\b((?:proxy-)?authorization|x-api-key|api-key|[A-Za-z0-9_]*(?:token|key|secret|password|passwd))"
    r"(\\?[\"']?\s*[:=]\s*\\?[\"']?)([^\"'\s,&}\]\\]{" + str(MIN_SECRET_LEN) + ",})"
)
# Whole header lines (`Authorization: Bearer x y`) keep only the header name.
_AUTH_HEADER_LINE = re.compile(r"(?im)^((?:proxy-)?authorization|x-api-key|api-key)(\s*:\s*)[^\r\n]+")
# A password in a URL: scheme://user:password@host (bounded repeats: a scan from each start is short).
_URL_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]{0,30}://[^/\s:@]{1,256}:)[^/\s@]{1,256}@")


def _words(name: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)  # camelCase -> camel_Case
    return [w for w in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if w]


def is_secret_name(name: str) -> bool:
    """True for names of keys, flags and environment variables that hold secrets: hub_token, api_key,
    OPENAI_API_KEY, --hub-token, HF_TOKEN, password, clientSecret; false for max_new_tokens, pad_token,
    api_key_env (the variable's name, not its value)."""
    words = _words(name)
    if not words or name.lower().lstrip("-").replace("-", "_") in _NOT_SECRET_NAMES:
        return False
    if words[-1] in _NOT_SECRET_LAST_WORDS:
        return False
    return any(w in _SECRET_WORDS for w in words)


def register_secret(value: str | None) -> None:
    """Treat `value` as a secret from now on, wherever it appears (e.g. the key read from a variable named by a
    flag, whose name need not look secret)."""
    if value and len(value) >= MIN_SECRET_LEN:
        _registered.add(value)


def known_secrets() -> list[str]:
    """Secret values this process holds: registered ones and the values of secret-named environment variables,
    longest first (so a key that contains another is replaced whole)."""
    found = set(_registered)
    for name, value in os.environ.items():
        if value and len(value) >= MIN_SECRET_LEN and is_secret_name(name):
            found.add(value)
    return sorted(found, key=len, reverse=True)


def scrub(text) -> str:
    """`text` (any object, as str) with every secret it contains replaced by `<redacted>`: for free text such as
    error bodies, exception messages and log lines."""
    text = text if isinstance(text, str) else str(text)
    text = scrub_known(text)
    text = _AUTH_HEADER_LINE.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)
    text = _AUTH_SCHEME.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)
    text = _SECRET_ASSIGNMENT.sub(_redact_assignment, text)
    return _URL_PASSWORD.sub(lambda m: m.group(1) + REDACTED + "@", text)


def scrub_known(text: str) -> str:
    """`text` with the secrets found by value and by shape replaced, but not by context: for values of a config or
    a command line (a chat template's `set key = ...` is not a secret assignment)."""
    for value in known_secrets():
        if value in text:
            text = text.replace(value, REDACTED)
    return _TOKEN_SHAPES.sub(REDACTED, text)


def _redact_assignment(m: re.Match) -> str:
    name, sep, value = m.group(1), m.group(2), m.group(3)
    if value == REDACTED or value.startswith("<redacted") or not (
        name.lower() in ("authorization", "proxy-authorization", "x-api-key", "api-key") or is_secret_name(name)
    ):
        return m.group(0)
    return name + sep + REDACTED


def redact_mapping(value, key: str = ""):
    """A copy of `value` (nested dicts and lists) with the string value of every secret-named key replaced, and
    known secrets (by value and shape) scrubbed from every other string."""
    if isinstance(value, Mapping):
        return {k: redact_mapping(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_mapping(v, key) for v in value]
    if isinstance(value, str):
        return REDACTED if value and is_secret_name(key) else scrub_known(value)
    return value


def redact_argv(argv: Iterable[str]) -> list[str]:
    """A command line with the value of every secret-named flag replaced (`--hub_token X`, `--hub-token=X`,
    `--api_key X`), and known secrets (by value and shape) scrubbed from every other argument."""
    out: list[str] = []
    hide_next = False
    for arg in map(str, argv):
        if hide_next and not arg.startswith("--"):
            out.append(REDACTED)
            hide_next = False
            continue
        hide_next = False
        if arg.startswith("--"):
            name, eq, _ = arg[2:].partition("=")
            if is_secret_name(name):
                if eq:
                    out.append(f"--{name}={REDACTED}")
                else:
                    out.append(arg)
                    hide_next = True
                continue
        out.append(scrub_known(arg))
    return out


class ScrubFilter(logging.Filter):
    """A logging filter that scrubs each record's final message (arguments merged in) before any handler sees it.

        logging.getLogger("distill.fleet.serve").addFilter(ScrubFilter())
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = scrub(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True
