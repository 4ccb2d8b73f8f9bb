"""``python -m colorize.parity DIR [--only KIND ...]``: one line per fixture, non-zero exit on any failure."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from colorize.parity.core import run_directory


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m colorize.parity", description=__doc__)
    p.add_argument("directory", type=Path, help="folder of <name>.json + <name>.safetensors fixtures")
    p.add_argument("--only", nargs="+", metavar="KIND", help="run only these fixture kinds (or file stems)")
    args = p.parse_args(argv)
    if not args.directory.is_dir():
        print(f"error: fixture directory {args.directory} does not exist", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    results = run_directory(args.directory, args.only)
    if not results:
        print(f"error: no fixtures found in {args.directory}" + (f" for {args.only}" if args.only else ""))
        return 1
    print(f"{'fixture':<24} {'max|diff|':>10} {'tol':>8}  result")
    for r in results:
        print(r.line())
    failed = [r.name for r in results if not r.passed]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
