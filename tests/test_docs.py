"""Every command has complete --help text and is documented in the README."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from clipindex.cli.commands import cli

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
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
def test_command_is_documented_in_readme(name: str) -> None:
    assert f"clipindex {name}" in README, name
    command = cli.commands[name]
    for param in command.params:
        if isinstance(param, click.Option):
            assert any(opt in README for opt in param.opts if opt.startswith("--") and opt != "--help"), (
                f"{name}: {param.opts} not in README"
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
