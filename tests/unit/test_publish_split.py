"""The pure parts of the split snapshot: which pods get their security.json rewritten
(netns.publish.security_writes) and which names gc takes for a killed publish's staged files
(netns.gc.staged_pid)."""

from __future__ import annotations

import pytest

from meshns.netns.gc import staged_pid
from meshns.netns.publish import security_writes


@pytest.mark.parametrize(("wanted", "on_disk", "written"), [
    ({}, {}, []),
    ({"a": "A", "b": "B"}, {"a": "A", "b": "B"}, []),  # a create's publish for the other pods
    ({"a": "A", "b": "B", "new": "N"}, {"a": "A", "b": "B"}, ["new"]),  # the new pod only
    ({"a": "A", "b": "B"}, {"a": "A", "b": None}, ["b"]),  # missing or unreadable file
    ({"a": "A2", "b": "B2"}, {"a": "A", "b": "B"}, ["a", "b"]),  # a policy for everyone changed
    ({"a": "A"}, {"a": "A", "gone": "G"}, []),  # files of pods not published are left alone
])
def test_security_writes(wanted: dict[str, str], on_disk: dict[str, str | None], written: list[str]) -> None:
    assert security_writes(wanted, on_disk) == written


@pytest.mark.parametrize(("name", "prefix", "pid"), [
    (".snapshot.json.123.tmp", ".", 123),
    (".security.json.77.tmp", ".", 77),
    (".snapshot.json.123.tmp", ".snapshot.json.", 123),
    (".security.json.77.tmp", ".snapshot.json.", None),  # not publish's shared file
    (".registry.db.12.tmp", ".snapshot.json.", None),  # other files of the state directory
    ("snapshot.json", ".", None),
    ("security.json", ".", None),
    (".snapshot.json.abc.tmp", ".", None),
    (".snapshot.json.12.tmpx", ".", None),
    (".12.tmp", ".", None),
    ("snapshot.json.12.tmp", ".", None),  # not hidden: not ours
])
def test_staged_pid(name: str, prefix: str, pid: int | None) -> None:
    assert staged_pid(name, prefix) == pid
