"""etcd's JSON gateway shapes (cluster.etcd_wire), decoded without an etcd: the messages below
are what etcd 3.4.23 sends (captured with curl), trimmed of header fields that are not read."""

from __future__ import annotations

import json

import pytest

from meshns.cluster.etcd_wire import (
    KV,
    Compacted,
    EtcdError,
    EtcdUnavailable,
    Event,
    LineSplitter,
    WatchBatch,
    b64,
    compare_revision,
    decode_stream_message,
    decode_unary,
    decode_watch_result,
    kv_from_json,
    parse_endpoint,
    prefix_range,
    put_request,
)

HEADER = {"cluster_id": "1", "member_id": "2", "revision": "5", "raft_term": "2"}


@pytest.mark.parametrize("url,want", [
    ("http://127.0.0.1:2379", ("127.0.0.1", 2379)),
    ("http://10.9.0.2", ("10.9.0.2", 2379)),
    ("http://etcd.example:12379/", ("etcd.example", 12379)),
    ("http://[::1]:2379", ("::1", 2379)),
])
def test_parse_endpoint(url: str, want: tuple[str, int]) -> None:
    assert parse_endpoint(url) == want


@pytest.mark.parametrize("url", ["https://h:2379", "h:2379", "http://h:2379/v3", "http://:2379", "http://h:99999",
                                 "http://h:2379?x=1", ""])
def test_parse_endpoint_refuses(url: str) -> None:
    with pytest.raises(EtcdError, match="endpoint"):
        parse_endpoint(url)


def test_request_shapes() -> None:
    assert put_request("/a", b"v", 0) == {"key": "L2E=", "value": "dg=="}
    assert put_request("/a", b"", 7) == {"key": "L2E=", "value": "", "lease": "7"}
    assert prefix_range("/a/") == {"key": b64("/a/"), "range_end": b64("/a0")}
    assert compare_revision("/a", "CREATE", 0) == {"key": "L2E=", "target": "CREATE", "result": "EQUAL",
                                                   "create_revision": "0"}
    assert compare_revision("/a", "MOD", 9)["mod_revision"] == "9"


def test_kv_with_and_without_optional_fields() -> None:
    full = {"key": "L2EvYg==", "create_revision": "4", "mod_revision": "5", "version": "2", "value": "aGVsbG8=",
            "lease": "4111120156297991697"}
    assert kv_from_json(full) == KV("/a/b", b"hello", 4, 5, 4111120156297991697)
    # a DELETE event's kv, and a put of an empty value: zero fields are left out
    assert kv_from_json({"key": "L2EvYg==", "mod_revision": "3"}) == KV("/a/b", b"", 0, 3, 0)


def test_non_utf8_key_round_trips() -> None:
    kv = kv_from_json({"key": b64(b"/a/\xff")})
    assert b64(kv.key) == b64(b"/a/\xff")


@pytest.mark.parametrize("status,body,error,match", [
    (400, {"error": "illegal base64 data at input byte 0", "message": "illegal base64 data at input byte 0",
           "code": 3}, EtcdError, "illegal base64"),
    (404, {"error": "etcdserver: requested lease not found", "message": "etcdserver: requested lease not found",
           "code": 5}, EtcdError, "lease not found"),
    (503, {"error": "etcdserver: no leader", "message": "etcdserver: no leader", "code": 14}, EtcdUnavailable,
     "no leader"),
    (504, {"message": "etcdserver: request timed out", "code": 4}, EtcdUnavailable, "timed out"),
    (500, {"message": "a\nmulti-line\n  message", "code": 2}, EtcdError, "^etcd: a multi-line message$"),
])
def test_unary_errors(status: int, body: dict[str, object], error: type[EtcdError], match: str) -> None:
    with pytest.raises(error, match=match) as info:
        decode_unary(status, json.dumps(body).encode())
    assert info.value.code == body["code"]


@pytest.mark.parametrize("body", [b"", b"<html>", b"[]"])
def test_unary_garbage(body: bytes) -> None:
    with pytest.raises(EtcdError, match="not a JSON object"):
        decode_unary(200, body)


def test_txn_answers() -> None:
    ok = decode_unary(200, json.dumps({"header": HEADER, "succeeded": True, "responses": []}).encode())
    failed = decode_unary(200, json.dumps({"header": HEADER}).encode())
    assert ok.get("succeeded", False) is True
    assert failed.get("succeeded", False) is False


@pytest.mark.parametrize("message,error,match", [
    ({"error": {"grpc_code": 14, "http_code": 503, "message": "transport is closing", "http_status": "x"}},
     EtcdUnavailable, "transport is closing"),
    ({"error": {"grpc_code": 14, "message": "error reading from server: EOF"}}, EtcdUnavailable, "EOF"),
    ({"error": {"grpc_code": 3, "http_code": 400, "message": "bad request"}}, EtcdError, "bad request"),
    ({"error": "x", "message": "flat error", "code": 3}, EtcdError, "flat error"),
    ({"nothing": 1}, EtcdError, "without a result"),
])
def test_stream_errors(message: dict[str, object], error: type[EtcdError], match: str) -> None:
    with pytest.raises(error, match=match):
        decode_stream_message(json.dumps(message).encode())


def test_watch_created_is_not_a_batch() -> None:
    assert decode_watch_result({"header": HEADER, "created": True}) is None


def test_watch_events() -> None:
    result = {"header": {**HEADER, "revision": "9"}, "events": [
        {"kv": {"key": "L2E=", "create_revision": "2", "mod_revision": "2", "version": "1", "value": "MQ=="}},
        {"type": "DELETE", "kv": {"key": "L2E=", "mod_revision": "3"}},
    ]}
    batch = decode_watch_result(result)
    assert batch == WatchBatch(9, (Event("PUT", KV("/a", b"1", 2, 2, 0)), Event("DELETE", KV("/a", b"", 0, 3, 0))))
    assert batch.next_revision == 4  # past the last event, not past the header's revision


def test_watch_progress_notification() -> None:
    batch = decode_watch_result({"header": {**HEADER, "revision": "12"}})
    assert batch == WatchBatch(12, ())
    assert batch.next_revision == 13


def test_watch_compacted() -> None:
    with pytest.raises(Compacted) as info:
        decode_watch_result({"header": HEADER, "canceled": True, "compact_revision": "4"})
    assert info.value.compact_revision == 4


def test_watch_canceled_for_another_reason() -> None:
    with pytest.raises(EtcdError, match="canceled the watch: mvcc: permission denied"):
        decode_watch_result({"header": HEADER, "canceled": True, "cancel_reason": "mvcc: permission denied"})


@pytest.mark.parametrize("chunks,lines", [
    ([b'{"a":1}\n{"b":2}\n'], [b'{"a":1}', b'{"b":2}']),
    ([b'{"a"', b':1}', b'\n{"b":', b'2}\n'], [b'{"a":1}', b'{"b":2}']),
    ([b'{"a":1}\n\n', b'\n'], [b'{"a":1}']),
    ([b'{"a":1}'], []),  # not finished yet
])
def test_line_splitter(chunks: list[bytes], lines: list[bytes]) -> None:
    splitter = LineSplitter()
    got: list[bytes] = []
    for chunk in chunks:
        got += splitter.feed(chunk)
    assert got == lines
