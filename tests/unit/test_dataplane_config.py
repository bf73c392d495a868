"""SidecarConfig loading: defaults, unknown keys, wrong types, bad values."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from meshns import ports
from meshns.dataplane.config import SidecarConfig, config_from_dict, load_config
from meshns.errors import UserError

MINIMAL = {"pod": "web-1", "pod_ip": "10.252.0.2"}


def test_defaults_follow_the_pod_contract() -> None:
    cfg = config_from_dict(MINIMAL)
    assert cfg == SidecarConfig(pod="web-1", pod_ip="10.252.0.2")
    assert (cfg.outbound_port, cfg.inbound_port, cfg.admin_port, cfg.probe_port) == (
        ports.OUTBOUND_PORT, ports.INBOUND_PORT, ports.ADMIN_PORT, ports.PROBE_PORT)
    assert cfg.inbound_source_ip == ports.INBOUND_SOURCE_IP == "127.0.0.6"
    assert (cfg.bind_ip, cfg.connect_timeout_s, cfg.idle_timeout_s, cfg.drain_timeout_s, cfg.log_level) == (
        "0.0.0.0", 5.0, 3600.0, 5.0, "info")


def test_every_key_can_be_set() -> None:
    raw = {**MINIMAL, "outbound_port": 1, "inbound_port": 2, "admin_port": 3, "probe_port": 4,
           "inbound_source_ip": "127.0.0.7", "bind_ip": "127.0.0.1", "connect_timeout_s": 1,
           "idle_timeout_s": 2.5, "drain_timeout_s": 0.5, "log_level": "debug"}
    cfg = config_from_dict(raw)
    assert cfg.connect_timeout_s == 1.0
    assert isinstance(cfg.connect_timeout_s, float)
    assert cfg.log_level == "debug"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([], "top level must be an object"),
        ({**MINIMAL, "outbound_prot": 1}, "unknown key 'outbound_prot'"),
        ({"pod": "x"}, "missing required key 'pod_ip'"),
        ({"pod_ip": "10.0.0.1"}, "missing required key 'pod'"),
        ({**MINIMAL, "pod": 3}, "pod must be str, got int"),
        ({**MINIMAL, "outbound_port": "15001"}, "outbound_port must be int, got str"),
        ({**MINIMAL, "outbound_port": 15001.0}, "outbound_port must be int, got float"),
        ({**MINIMAL, "outbound_port": True}, "outbound_port must be int, got bool"),
        ({**MINIMAL, "connect_timeout_s": "5"}, "connect_timeout_s must be float, got str"),
        ({**MINIMAL, "connect_timeout_s": False}, "connect_timeout_s must be float, got bool"),
        ({**MINIMAL, "idle_timeout_s": None}, "idle_timeout_s must be float, got NoneType"),
        ({**MINIMAL, "pod": ""}, "pod must not be empty"),
        ({**MINIMAL, "pod_ip": "10.0.0"}, "pod_ip must be an IPv4 address"),
        ({**MINIMAL, "bind_ip": "::"}, "bind_ip must be an IPv4 address"),
        ({**MINIMAL, "inbound_source_ip": "localhost"}, "inbound_source_ip must be an IPv4 address"),
        ({**MINIMAL, "admin_port": 65536}, "admin_port must be in 0..65535"),
        ({**MINIMAL, "probe_port": -1}, "probe_port must be in 0..65535"),
        ({**MINIMAL, "outbound_port": 7, "inbound_port": 7}, "must differ"),
        ({**MINIMAL, "drain_timeout_s": 0}, "drain_timeout_s must be a positive finite number"),
        ({**MINIMAL, "connect_timeout_s": -1.0}, "connect_timeout_s must be a positive"),
        ({**MINIMAL, "log_level": "verbose"}, "log_level must be one of"),
    ],
)
def test_rejected(raw: Any, message: str) -> None:
    with pytest.raises(UserError, match=message):
        config_from_dict(raw)


def test_ports_zero_allowed_for_tests() -> None:
    cfg = config_from_dict({**MINIMAL, "outbound_port": 0, "inbound_port": 0, "admin_port": 0})
    assert cfg.outbound_port == cfg.inbound_port == 0


def test_load_config_file(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.json"
    path.write_text(json.dumps({**MINIMAL, "log_level": "warning"}))
    assert load_config(path).log_level == "warning"


def test_load_config_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="cannot read"):
        load_config(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{pod: 1")
    with pytest.raises(UserError, match="not valid JSON"):
        load_config(bad)
    nan = tmp_path / "nan.json"
    nan.write_text('{"pod": "p", "pod_ip": "10.0.0.1", "idle_timeout_s": NaN}')
    with pytest.raises(UserError, match="idle_timeout_s must be a positive finite number"):
        load_config(nan)


def test_main_reports_config_errors_as_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from meshns.dataplane.server import main

    assert main(["--config", str(tmp_path / "missing.json")]) == UserError.exit_code
    assert "cannot read" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**MINIMAL, "colour": "blue"}))
    assert main(["--config", str(bad)]) == 2
    assert "unknown key 'colour'" in capsys.readouterr().err
    assert main([]) == 2  # --config is required
