"""The repository's Markdown stays navigable: every relative link and every in-repo file path it names resolves,
no link leaves the repository, the README stays short, and the license file is the one pyproject declares.

    [the verifier](docs/verifier.md#verdicts)   -> docs/verifier.md exists and has a heading "Verdicts"
    `eval/parse.py`                             -> eval/parse.py exists
    `benchmarks/quality.py --device cuda`       -> benchmarks/quality.py exists (paths inside code are checked too)
    `checkpoints/<run>/run.json`, `runs/x.md`   -> not checked: placeholders and outputs, not files of the repo

Markdown files are the tracked ones (`git ls-files '*.md'`). A path in backticks or a code block is checked when it
starts with a top-level folder the repository tracks and ends with a known file extension; checkpoints/ (run
outputs) is left out. Anchors into Markdown files are checked against GitHub's heading slugs. Markdown is parsed
with regular expressions rather than a Markdown library: links, code spans and headings are all that is needed,
and no dependency of the project parses Markdown.
"""

from __future__ import annotations

import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 260

FENCE = re.compile(r"^ {0,3}(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REF_LINK = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"", re.I)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
# A file path inside code: no placeholders (<run>, {x}, *, $VAR, a|b), a known extension, optional trailing
# punctuation of the sentence or command around it.
PATH_TOKEN = re.compile(r"^(?:\./)?([A-Za-z0-9_.\-]+(?:/[A-Za-z0-9_.\-]+)+\.(?:py|md|yaml|yml|json|jsonl|toml|jinja|sh|txt|cfg|ini))[,.;:)]*$")
NOT_CHECKED_TOP = {"checkpoints"}


def _git_ls(*patterns: str) -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", *patterns], cwd=ROOT, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return []
    return [line for line in out.stdout.splitlines() if line]


MARKDOWN = _git_ls("*.md")
pytestmark = pytest.mark.skipif(not MARKDOWN, reason="not a git checkout: no tracked Markdown to check")


@cache
def tracked_top_level() -> frozenset[str]:
    return frozenset(p.split("/", 1)[0] for p in _git_ls() if "/" in p) - NOT_CHECKED_TOP


def split_code(text: str) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(prose lines, fenced-code lines), each as (line number, text)."""
    prose, code, fence = [], [], None
    for n, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if m and (fence is None or m.group(1) == fence):
            fence = m.group(1) if fence is None else None
            continue
        (code if fence else prose).append((n, line))
    return prose, code


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link renders as its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    prose, _ = split_code(path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    out = set()
    for _, line in prose:
        out.update(HTML_ANCHOR.findall(line))
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        k = seen.get(base, 0)
        seen[base] = k + 1
        out.add(base if k == 0 else f"{base}-{k}")
    return frozenset(out)


def links(text: str) -> list[tuple[int, str]]:
    """(line, target) of every Markdown link and link reference outside code."""
    prose, _ = split_code(text)
    out = []
    for n, line in prose:
        line = INLINE_CODE.sub("", line)
        out += [(n, t) for t in LINK.findall(line)]
        m = REF_LINK.match(line)
        if m:
            out.append((n, m.group(1)))
    return out


def code_paths(text: str) -> list[tuple[int, str]]:
    """(line, path) of every repository file path named in inline code or a code block."""
    prose, code = split_code(text)
    chunks = [(n, span[1]) for n, line in prose for span in INLINE_CODE.findall(line)] + code
    out = []
    for n, chunk in chunks:
        for token in re.split(r"[\s=\"'\[\](){},]+", chunk):
            m = PATH_TOKEN.match(token)
            if m and m.group(1).split("/", 1)[0] in tracked_top_level():
                out.append((n, m.group(1)))
    return out


def link_problem(md: Path, target: str) -> str | None:
    """Why a link target of `md` does not resolve inside the repository, or None."""
    if SCHEME.match(target) or target.startswith("//"):
        return None  # a URL: not this test's business
    path_part, _, anchor = target.partition("#")
    if path_part.startswith("/"):
        return "absolute path (breaks outside this machine)"
    dest = (md.parent / path_part).resolve() if path_part else md
    if not dest.is_relative_to(ROOT):
        return "points outside the repository"
    if not dest.exists():
        return "no such file or folder"
    if anchor and dest.suffix == ".md" and dest.is_file() and anchor.lower() not in anchors(dest):
        return f"no heading with anchor #{anchor} in {dest.relative_to(ROOT)}"
    return None


@pytest.mark.parametrize("name", MARKDOWN)
def test_every_relative_link_resolves_inside_the_repository(name):
    md = ROOT / name
    problems = [f"{name}:{n}: ({t}) {why}" for n, t in links(md.read_text(encoding="utf-8"))
                if (why := link_problem(md, t))]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", MARKDOWN)
def test_every_file_path_named_in_code_exists(name):
    md = ROOT / name
    problems = [f"{name}:{n}: `{p}` does not exist" for n, p in code_paths(md.read_text(encoding="utf-8"))
                if not (ROOT / p).exists() and not (md.parent / p).exists()]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", MARKDOWN)
def test_no_reference_to_team_notes_outside_the_repository(name):
    text = (ROOT / name).read_text(encoding="utf-8")
    for needle in ("../shared/", "DESIGN.md", "STACK.md"):
        assert needle not in text, f"{name} mentions {needle}: the repository documents itself (docs/)"


def test_readme_is_short():
    n = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines; the guide belongs in docs/ (limit {README_MAX_LINES})"


def test_license_is_the_apache_license_pyproject_declares():
    license_text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in license_text
    assert "END OF TERMS AND CONDITIONS" in license_text  # the whole text, not a header
    # a regular expression, not tomllib: the project supports Python 3.10, which has no tomllib
    declared = re.search(r'^license\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(encoding="utf-8"), re.M)
    assert declared and declared.group(1) == "Apache-2.0"


# The checker itself: what it must catch and what it must leave alone.


def test_checker_catches_broken_links_paths_and_anchors(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# Title\n\n## The `verify` step: parse, match\n")
    md = tmp_path / "docs" / "b.md"
    md.write_text("x")
    assert link_problem(md, "a.md") is None
    assert link_problem(md, "a.md#the-verify-step-parse-match") is None
    assert link_problem(md, "a.md#title") is None
    assert "no heading" in link_problem(md, "a.md#missing")
    assert "no such file" in link_problem(md, "c.md")
    assert "outside" in link_problem(md, "../../elsewhere.md")
    assert "absolute" in link_problem(md, "/etc/passwd")
    assert link_problem(md, "https://example.com/x.md") is None


def test_link_and_path_extraction_skip_code_and_placeholders():
    text = (
        "See [the verifier](docs/verifier.md) and `eval/parse.py`.\n"
        "A list in code is no link: `[f(a=1), g(b=\"x\")]`, nor `checkpoints/<run>/run.json` a path.\n"
        "[ref]: docs/cli.md\n"
        "```bash\n"
        "[not](a-link.md)\n"
        "OMP_NUM_THREADS=1 python benchmarks/verify_speed.py --out runs/x.json\n"
        "```\n"
    )
    assert [t for _, t in links(text)] == ["docs/verifier.md", "docs/cli.md"]
    paths = [p for _, p in code_paths(text)]
    assert "eval/parse.py" in paths and "benchmarks/verify_speed.py" in paths
    assert not any("<" in p or p.startswith(("runs/", "checkpoints/")) for p in paths)


def test_slugs_follow_github():
    assert slug("Does training help, and does DPO add to SFT?") == "does-training-help-and-does-dpo-add-to-sft"
    assert slug("Fast DPO: `dpo_speed.py`") == "fast-dpo-dpo_speedpy"
    assert slug("Admission: `distill fleet admit`") == "admission-distill-fleet-admit"
