"""The HTTP-related sidecar config keys and the parser choice."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from meshns.cli.main import SIZE, cli
from meshns.dataplane.config import config_from_dict
from meshns.dataplane.http1.parser import parser_kit
from meshns.errors import UserError
from meshns.model import PodSpec


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


def test_request_limits_keys() -> None:
    base = {"pod": "p", "pod_ip": "10.0.0.2"}
    cfg = config_from_dict(base)
    assert (cfg.max_request_body_bytes, cfg.request_headers_timeout_s) == (0, 10.0)
    cfg = config_from_dict({**base, "max_request_body_bytes": 1024, "request_headers_timeout_s": 2})
    assert (cfg.max_request_body_bytes, cfg.request_headers_timeout_s) == (1024, 2.0)
    for bad, match in [({"max_request_body_bytes": -1}, "max_request_body_bytes must be 0"),
                       ({"max_request_body_bytes": 1.5}, "max_request_body_bytes must be int"),
                       ({"request_headers_timeout_s": 0}, "request_headers_timeout_s must be a positive"),
                       ({"request_headers_timeout_s": float("inf")}, "request_headers_timeout_s must be a positive")]:
        with pytest.raises(UserError, match=match):
            config_from_dict({**base, **bad})


def test_create_option_parsing_and_the_pod_spec_round_trip() -> None:
    assert [SIZE.convert(v, None, None) for v in ("0", "1000", "64K", "64KiB", "2M", "1g", "5 MB")] == [
        0, 1000, 65536, 65536, 2 << 20, 1 << 30, 5 << 20]
    for bad in ("", "-1", "1.5M", "K", "12X"):
        with pytest.raises(click.BadParameter):
            SIZE.convert(bad, None, None)
    runner = CliRunner()
    out = runner.invoke(cli, ["create", "x", "--max-request-body", "nope", "--dry-run"])
    assert out.exit_code != 0 and "is not a size" in out.output
    out = runner.invoke(cli, ["create", "x", "--request-headers-timeout", "0", "--dry-run"])
    assert out.exit_code != 0
    spec = PodSpec(max_request_body_bytes=4096, request_headers_timeout_s=2.5)
    back = PodSpec.from_json(spec.to_json())
    assert (back.max_request_body_bytes, back.request_headers_timeout_s) == (4096, 2.5)
    old = PodSpec.from_json('{"app": ["x"]}')  # a row written before these options existed
    assert (old.max_request_body_bytes, old.request_headers_timeout_s) == (0, 10.0)

