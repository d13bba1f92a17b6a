"""`deforum-wan` command line: inspect, plan and render Deforum settings files."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Sequence

from . import __version__


def _load(path: str):
    from .settings import load_settings

    return load_settings(path)


def cmd_inspect(args: argparse.Namespace) -> int:
    from .inspection import format_inspection, inspect_settings

    ins = inspect_settings(_load(args.settings))
    print(json.dumps(ins.to_dict(), indent=2, ensure_ascii=False) if args.json else format_inspection(ins))
    return 0


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], str]] = {
    "inspect": (cmd_inspect, "show frames, prompts and camera schedules of a settings file"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deforum-wan", description="Render Deforum settings with Wan video models.")
    parser.add_argument("--version", action="version", version=f"deforum-wan {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("inspect", help=COMMANDS["inspect"][1])
    p.add_argument("settings", help="Deforum settings file (.txt/.json)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .schedules import ScheduleError
    from .settings import SettingsError

    args = build_parser().parse_args(argv)
    handler = COMMANDS[args.command][0]
    try:
        return handler(args)
    except (SettingsError, ScheduleError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
