"""Argument checks that must refuse bad input before anything is made (no root needed: click
rejects them before the command body runs)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from meshns.cli.main import cli


@pytest.mark.parametrize(("args", "message"), [
    (["create", "web", "--drain-timeout", "0"], "--drain-timeout"),  # the sidecar needs a positive drain
    (["create", "web", "--drain-timeout", "-1"], "--drain-timeout"),
])
def test_create_refuses_bad_values_up_front(args: list[str], message: str, tmp_path: object) -> None:
    result = CliRunner().invoke(cli, ["--state-dir", str(tmp_path), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
