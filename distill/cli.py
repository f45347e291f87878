"""The `distill` command line: registers each command, which the module doing the work defines.

Every module below has `add_parser(subparsers)`, declaring its command's flags with their help and the function
that runs it (`set_defaults(run=...)`); heavy imports (torch, transformers, datasets) wait inside those
functions, so `distill --help` answers in well under a second.

    distill import bfcl --categories simple_python,multiple --out tasks.jsonl
    distill score --tasks tasks.jsonl --traces traces.jsonl --out report/
"""

from __future__ import annotations

import argparse
import sys

from data_gen import bfcl, compose, generate, local_models, pairs, xlam
from distill import demo, env, evaluate, merge, publish, serve, train
from distill.fleet import admission, router
from distill.fleet import evaluate as fleet_evaluate
from distill.fleet import serve as fleet_serve
from eval import compare, report
from eval.io import DistillError
from eval.secrets import scrub

EPILOG = """\
the flow:
  distill import bfcl --categories simple_python,live_simple --out tasks.jsonl
  distill generate --tasks tasks.jsonl --backend openai --model M --samples 8 --out traces.jsonl
  distill score --tasks tasks.jsonl --traces traces.jsonl --out report/
  distill pairs --tasks tasks.jsonl --traces traces.jsonl --out pairs/
  accelerate launch -m distill.train recipes/<student>/sft.yaml

Run `distill COMMAND --help` for each command's flags."""


def build_parser() -> argparse.ArgumentParser:
    from distill import __version__

    parser = argparse.ArgumentParser(
        prog="distill",
        description="Turn one large teacher LLM into a fleet of small function-calling students.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"distill {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sources = commands.add_parser(
        "import",
        help="import function-calling tasks into distill's tasks.jsonl format",
        description="Import function-calling tasks into distill's task format (one JSON object per line: "
        "id, category, messages, tools, expected).",
    ).add_subparsers(dest="source", required=True, metavar="SOURCE")
    bfcl.add_parser(sources)
    xlam.add_parser(sources)

    report.add_parser(commands)
    pairs.add_parser(commands)
    generate.add_parser(commands)
    train.add_parser(commands)
    merge.add_parser(commands)
    evaluate.add_parser(commands)
    serve.add_parser(commands)
    compare.add_parser(commands)

    actions = commands.add_parser(
        "fleet",
        help="the fleet of students: admission (fleet.yaml), routing and serving",
        description="The fleet registry (fleet.yaml) and what works on it.",
    ).add_subparsers(dest="fleet_command", required=True, metavar="ACTION")
    admission.add_parser(actions)
    router.add_parser(actions)
    fleet_evaluate.add_parser(actions)
    fleet_serve.add_parser(actions)

    publish.add_parser(commands)
    compose.add_parser(commands)
    local_models.add_parser(commands)
    demo.add_parser(commands)
    env.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    try:
        if getattr(args, "raw_argv", False):  # `distill train`: TRL's parser reads the recipe flags itself
            return args.run(argv[argv.index(args.command) + 1:])
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        return args.run(args)
    except DistillError as e:
        print(f"distill {args.command}: error: {scrub(str(e))}", file=sys.stderr)
        return 2
    except OSError as e:  # a safety net: the modules turn what they expect into DistillErrors naming the path
        where = f"{e.filename}: " if e.filename else ""
        print(f"distill {args.command}: error: {where}{scrub(e.strerror or str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"distill {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # `python -m distill.cli ...` runs the CLI too, like `python -m distill ...`
    raise SystemExit(main())
