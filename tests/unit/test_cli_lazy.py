"""The CLI loads other modules' commands when named: every command those modules register must
be listed in LAZY_COMMANDS under its module (or it would be unreachable by name)."""

from __future__ import annotations

import importlib

import click
from click.testing import CliRunner

from meshns.cli.main import LAZY_COMMANDS, OUTPUT, _mesh, cli


def test_lazy_commands_name_exactly_what_each_module_registers() -> None:
    for module in set(LAZY_COMMANDS.values()):
        group = click.Group()
        importlib.import_module(f"meshns.cli.{module}").register(group, _mesh, OUTPUT)
        assert set(group.commands) == {c for c, m in LAZY_COMMANDS.items() if m == module}, module


def test_a_lazy_command_is_found_by_name_and_listed_in_help() -> None:
    runner = CliRunner()
    out = runner.invoke(cli, ["service", "list", "--help"])
    assert out.exit_code == 0 and "List services" in out.output
    out = runner.invoke(cli, ["--help"])
    assert out.exit_code == 0
    assert all(f"  {name}" in out.output for name in LAZY_COMMANDS)
