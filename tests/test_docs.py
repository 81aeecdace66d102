"""Every command has complete --help text, is in the README and the guide, and docs/cli.md is fresh."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from clipindex.cli.commands import cli

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
GUIDE = (ROOT / "docs" / "guide.md").read_text(encoding="utf-8")
COMMANDS = sorted(cli.commands)


def test_there_are_commands() -> None:
    assert {"convert", "ingest"} <= set(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_command_has_help_and_every_option_is_described(name: str) -> None:
    command = cli.commands[name]
    assert command.help and len(command.help.strip()) > 40, name
    for param in command.params:
        if isinstance(param, click.Option):
            assert param.help and param.help.strip(), f"{name} {param.opts}"
            if param.envvar:
                assert param.show_envvar, f"{name} {param.opts}: env var not shown in --help"
    result = CliRunner().invoke(cli, [name, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output


@pytest.mark.parametrize("name", COMMANDS)
def test_command_is_documented_in_the_guide(name: str) -> None:
    assert f"clipindex {name}" in GUIDE, name
    command = cli.commands[name]
    for param in command.params:
        if isinstance(param, click.Option):
            assert any(opt in GUIDE for opt in param.opts if opt.startswith("--") and opt != "--help"), (
                f"{name}: {param.opts} not in docs/guide.md"
            )


def test_readme_starts_with_the_two_commands() -> None:
    head = README.split("```", 2)[1]
    assert "clipindex ingest ./images" in head
    assert "python -m pytest" in head


def test_python_dash_m_indexer_help() -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "clipindex", "--help"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and "ingest" in proc.stdout


def test_readme_is_a_short_quick_start() -> None:
    lines = README.splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; the reference belongs in docs/"
    for doc in ("docs/cli.md", "docs/library.md", "docs/operations.md", "docs/guide.md"):
        assert f"]({doc})" in README, doc
    for heading in ("## Install", "## Cron", "## The library", "## Development", "### Contributing"):
        assert heading in lines, heading


def test_docs_hold_no_history() -> None:
    import re

    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        found = re.findall(r"(?i)\b(?:before|after) issue \d+|\(issue \d+\)|an earlier run", text)
        assert not found, f"{path.name}: {found}"


def test_cli_reference_is_fresh() -> None:
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "generate_cli.py"), "--check"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr


def test_cli_reference_check_fails_on_a_stale_file(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("generate_cli", ROOT / "docs" / "generate_cli.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = module.render()
    for name in COMMANDS:
        assert f"## clipindex {name}\n" in text
        options = [p.opts[0] for p in cli.commands[name].params if isinstance(p, click.Option)]
        assert all(opt in text for opt in options), name
    stale = tmp_path / "cli.md"
    stale.write_text(text.replace("Usage:", "Usage (old):", 1), encoding="utf-8")
    assert not module.is_fresh(stale)
    assert not module.is_fresh(tmp_path / "missing.md")
