"""The `distill` command line.

Each subcommand is declared here with its flags and help, and runs a function of the module that owns the
feature; heavy imports (torch, transformers, datasets) happen inside those functions, so `distill --help`
answers in well under a second.

    distill import bfcl --categories simple_python,multiple --out tasks.jsonl
    distill score --tasks tasks.jsonl --traces traces.jsonl --out report/
"""

from __future__ import annotations

import argparse
import sys

from eval.io import DistillError

EPILOG = """\
the flow:
  distill import bfcl --categories simple_python,live_simple --out tasks.jsonl
  distill generate --tasks tasks.jsonl --backend openai --model M --samples 8 --out traces.jsonl
  distill score --tasks tasks.jsonl --traces traces.jsonl --out report/
  distill pairs --tasks tasks.jsonl --traces traces.jsonl --out pairs/
  accelerate launch -m distill.train recipes/<student>/sft.yaml

Run `distill COMMAND --help` for each command's flags."""


def _add_import(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import",
        help="import function-calling tasks into distill's tasks.jsonl format",
        description="Import function-calling tasks into distill's task format (one JSON object per line: "
        "id, category, messages, tools, expected).",
    )
    src = p.add_subparsers(dest="source", required=True, metavar="SOURCE")

    b = src.add_parser(
        "bfcl",
        help="tasks from the BFCL data shipped in the bfcl-eval package",
        description="Convert Berkeley Function Calling Leaderboard categories (read from the installed "
        "bfcl-eval package; install it with `pip install --no-deps bfcl-eval`) into tasks. BFCL parameter types "
        "become JSON Schema (dict->object, float->number, tuple->array); ids and categories stay BFCL's.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="categories: " + ", ".join(_bfcl_categories()),
    )
    b.add_argument(
        "--categories",
        default="simple_python,multiple,parallel,parallel_multiple,irrelevance",
        help="comma-separated BFCL categories, or 'all' (default: %(default)s)",
    )
    b.add_argument("--limit", type=int, default=None, help="keep at most this many tasks per category")
    b.add_argument("--out", required=True, help="output tasks .jsonl file (written atomically)")

    j = src.add_parser(
        "jsonl",
        help="tasks from xLAM/APIGen-style rows (query, tools, answers)",
        description="Convert rows in the xLAM/APIGen format ({\"query\": str, \"tools\": [...] or JSON string, "
        "\"answers\": [...] or JSON string}) into tasks. Tools may be in OpenAI form or xLAM's "
        "{name, description, parameters: {arg: {type, description}}} form; answers become the expected calls.",
    )
    j.add_argument("path", help="input .jsonl file")
    j.add_argument("--category", default="xlam", help="category written on every task (default: %(default)s)")
    j.add_argument("--id-prefix", default=None, help="task id prefix (default: the category)")
    j.add_argument("--out", required=True, help="output tasks .jsonl file (written atomically)")


def _bfcl_categories() -> list[str]:
    from data_gen.bfcl import SUPPORTED_CATEGORIES

    return list(SUPPORTED_CATEGORIES)


def _add_score(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score",
        help="verify traces against their tasks and write report.json, verdicts.jsonl, summary.md",
        description="Verify every trace (parse the output, validate arguments against the tool's JSON Schema, "
        "match the expected calls with BFCL's AST rules) and write report.json, verdicts.jsonl and summary.md "
        "into --out.",
    )
    p.add_argument("--tasks", required=True, help="tasks .jsonl file")
    p.add_argument("--traces", required=True, nargs="+", help="one or more traces .jsonl files")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--model",
        default=None,
        help="score only traces of this model (default: all; a file with several models is scored per model "
        "in one report each under --out/<model>)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distill",
        description="Turn one large teacher LLM into a fleet of small function-calling students.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    from distill import __version__

    parser.add_argument("--version", action="version", version=f"distill {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_import(sub)
    _add_score(sub)
    return parser


def run(args: argparse.Namespace) -> int:
    if args.command == "import" and args.source == "bfcl":
        from data_gen.bfcl import import_bfcl_cli

        return import_bfcl_cli(args)
    if args.command == "import" and args.source == "jsonl":
        from data_gen.xlam import import_xlam_cli

        return import_xlam_cli(args)
    if args.command == "score":
        from eval.report import score_cli

        return score_cli(args)
    raise AssertionError(f"unhandled command {args.command}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except DistillError as e:
        print(f"distill {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"distill {args.command}: interrupted", file=sys.stderr)
        return 130
