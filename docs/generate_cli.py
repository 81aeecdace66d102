"""Write docs/cli.md, the CLI reference, from every command's ``--help``; ``--check`` fails when it is stale.

python docs/generate_cli.py           # rewrite docs/cli.md
python docs/generate_cli.py --check   # exit 1 if docs/cli.md differs from what --help says (CI runs this)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import click
from click.testing import CliRunner

from clipindex.cli import cli

TARGET = Path(__file__).resolve().parent / "cli.md"
WIDTH = 100  # --help is wrapped at this width, whatever the terminal


def help_text(args: list[str]) -> str:
    result = CliRunner().invoke(cli, [*args, "--help"], prog_name="clipindex", terminal_width=WIDTH)
    if result.exit_code != 0:
        raise SystemExit(f"clipindex {' '.join(args)} --help failed: {result.output}")
    return result.output.rstrip() + "\n"


def render() -> str:
    parts = [
        "# CLI reference\n",
        "\n",
        "Generated from `--help` by `python docs/generate_cli.py`; CI fails when this file is stale. Options read\n",
        "the flag, then the environment variable shown, then the default.\n",
        "\n",
        "## clipindex\n\n```\n",
        help_text([]),
        "```\n",
    ]
    assert isinstance(cli, click.Group)
    for name in sorted(cli.commands):
        parts += [f"\n## clipindex {name}\n\n```\n", help_text([name]), "```\n"]
    return "".join(parts)


def is_fresh(target: Path = TARGET) -> bool:
    """``target`` holds exactly what the commands' ``--help`` says now."""
    return target.exists() and target.read_text(encoding="utf-8") == render()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when docs/cli.md is stale instead of writing it")
    args = parser.parse_args()
    if args.check:
        if not is_fresh():
            print(f"{TARGET} is stale: run `python docs/generate_cli.py` and commit it", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(render(), encoding="utf-8")
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
