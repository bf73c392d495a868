"""The HTTP-related sidecar config keys and the parser choice."""

from __future__ import annotations

import pytest

from meshns.dataplane.config import config_from_dict
from meshns.dataplane.http1.parser import parser_kit
from meshns.errors import UserError


def test_http_parser_key() -> None:
    base = {"pod": "p", "pod_ip": "10.0.0.2"}
    assert config_from_dict(base).http_parser == "auto"
    assert config_from_dict({**base, "http_parser": "h11"}).http_parser == "h11"
    with pytest.raises(UserError, match="http_parser"):
        config_from_dict({**base, "http_parser": "fast"})
    with pytest.raises(UserError, match="snapshot_dir_fd"):
        config_from_dict({**base, "snapshot_dir_fd": -2})


def test_parser_kits() -> None:
    assert parser_kit("auto").name == "httptools"
    assert parser_kit("httptools").name == "httptools"
    assert parser_kit("h11").name == "h11"
