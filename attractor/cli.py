"""Command line: `attractor <command>` (or `python -m attractor <command>`).

Errors a user can cause (unknown names, bad values) print as one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import sys

from attractor.errors import ConfigError


def cmd_models(args: argparse.Namespace) -> None:
    """Print every model preset with its parameter counts and forward FLOPs per token."""
    from attractor.models import PRESETS, describe

    names = args.names or list(PRESETS)
    rows = [describe(n) for n in names]
    print(f"{'preset':<18} {'family':<14} {'dense':>8} {'total':>8} {'GFLOP/tok':>10} {'+/iter':>8}")
    for r in rows:
        per_iter = f"{r['flops_per_iter'] / 1e9:8.4f}" if r["flops_per_iter"] else f"{'-':>8}"
        print(f"{r['name']:<18} {r['family']:<14} {r['dense'] / 1e6:7.2f}M {r['total'] / 1e6:7.2f}M "
              f"{r['flops_base'] / 1e9:10.4f} {per_iter}")
    print("dense: parameters in matrix multiplies (the embedding lookup is excluded); GFLOP/tok: "
          "forward with no recurrent iterations; +/iter: each attractor evaluation or loop.")


COMMANDS = {"models": cmd_models}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="attractor", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    models = sub.add_parser("models", help=cmd_models.__doc__)
    models.add_argument("names", nargs="*", help="presets to show (default: all)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except ConfigError as err:
        print(f"attractor: error: {err}", file=sys.stderr)
        return 2
    return 0
