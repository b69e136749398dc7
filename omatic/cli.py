"""The `pfq-omatic` command line: parse arguments, call the library, map errors to exit codes.

Exit codes: 0 ok, 1 user error, 2 build/verify/lab failure. Expected failures print one
line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from omatic import __version__
from omatic.errors import OmaticError, UserError

Handler = Callable[[argparse.Namespace, TextIO], int]


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on bad usage; here bad usage is a user error (exit 1)."""

    def error(self, message: str) -> Any:
        raise UserError(f"{message} (see '{self.prog} --help')")


def _jobs(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, not {text!r}")
    return value


def _print_json(data: Any, out: TextIO) -> None:
    json.dump(data, out, indent=1)
    out.write("\n")


def _print_sites(report: Any, out: TextIO) -> None:
    for site in report.sites:
        where = f"{site.file}:{site.line}:{site.column}"
        func = site.function or "-"
        out.write(f"{where}\t{site.callee}\t{site.context}\t{func}\t{site.action}\t{site.reason}\n")
    for problem in report.problems:
        out.write(f"{problem['file']}\tproblem\t{problem['error']}\n")


def _summary(report: Any) -> str:
    t = report.totals()
    actions = ", ".join(f"{n} {a}" for a, n in t["by_action"].items()) or "none"
    return (f"{t['sites']} site(s) in {t['files_with_sites']} of {t['files_scanned']} file(s) "
            f"({actions}); {t['problems']} problem(s)")


def cmd_scan(args: argparse.Namespace, out: TextIO) -> int:
    from omatic.rules import load_rules
    from omatic.tree import scan_tree

    report = scan_tree(Path(args.path), load_rules(), jobs=args.jobs)
    if args.json:
        _print_json(report.to_json("scan"), out)
    else:
        _print_sites(report, out)
        out.write(_summary(report) + "\n")
    return 0


def cmd_patch(args: argparse.Namespace, out: TextIO) -> int:
    from omatic.rules import load_rules
    from omatic.tree import PATCH_NAME, patch_tree

    report = patch_tree(Path(args.src), Path(args.out), load_rules(), jobs=args.jobs)
    if args.json:
        _print_json(report.to_json("patch"), out)
    else:
        for f in report.files:
            if f.status != "unchanged":
                out.write(f"{f.file}\t{f.status}\t{len(f.edits)} edit(s)\t{f.reason}\n")
        t = report.totals()
        out.write(f"{_summary(report)}; {t['files_rewritten']} file(s) rewritten, "
                  f"{t['files_refused']} refused\n")
        out.write(f"wrote {args.out} (diff: {Path(args.out) / PATCH_NAME})\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pfq-omatic",
        description="Make PFQ-accelerated NIC drivers: rewrite, build, verify, prove.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Handler, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--jobs", "-j", type=_jobs, default=None,
                       help="worker processes (default: cores)")
        p.set_defaults(handler=handler)
        p.add_argument("--json", action="store_true", help="print the report as JSON")
        return p

    p = add("scan", cmd_scan, "list every receive entry point site under PATH")
    p.add_argument("path", metavar="PATH", help="a driver tree or one C file")

    p = add("patch", cmd_patch, "write a copy of SRC with every site rewritten into PFQ hooks")
    p.add_argument("src", metavar="SRC", help="the driver tree to read (never written)")
    p.add_argument("--out", required=True, metavar="DIR", help="where the rewritten tree goes")
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run one command; returns the exit code."""
    out = out or sys.stdout
    try:
        args = build_parser().parse_args(argv)
        code: int = args.handler(args, out)
        return code
    except OmaticError as err:
        print(f"pfq-omatic: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("pfq-omatic: interrupted", file=sys.stderr)
        return 130
