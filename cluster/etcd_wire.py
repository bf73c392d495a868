"""etcd's v3 JSON gateway, pure: the client's value types and errors, request bodies, and the
decoding of unary responses and watch-stream messages.

The gateway (served by etcd itself on the client port, under ``/v3/``) is grpc-gateway's JSON
mapping of the protobuf API, and it has habits a reader of the proto would not guess (seen on
etcd 3.4):

- ``bytes`` fields (keys, values, range ends) are base64; ``int64`` fields are JSON strings.
- Zero values are left out: a txn whose compare failed has no ``succeeded``; a PUT event has no
  ``type`` (PUT is enum value 0); a DELETE event's ``kv`` holds only ``key`` and
  ``mod_revision``; a keepalive on a lease that is gone answers with no ``TTL`` at all.
- A unary error is a non-200 status with ``{"error": msg, "message": msg, "code": grpc_code}``.
- A streaming call (watch, lease keepalive) answers 200 with newline-separated messages
  ``{"result": {...}}``; an error inside the stream is ``{"error": {"grpc_code": .., "message":
  ..}}``, with or without ``http_code``.

Keeping this apart from the socket code lets every shape be table-tested without an etcd.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from meshns.errors import RegistryError

DEFAULT_PORT = 2379
# gRPC status codes the gateway passes through in "code" / "grpc_code".
GRPC_DEADLINE_EXCEEDED = 4
GRPC_NOT_FOUND = 5
GRPC_UNAVAILABLE = 14

Json = dict[str, Any]


class EtcdError(RegistryError):
    """etcd refused or failed a request. A RegistryError because the remedy is the same as for
    the embedded registry's storage failures: fix or wait for the store, then retry."""

    def __init__(self, message: str, code: int = 0) -> None:
        # One line, whatever the server put in its message: these end up as CLI error lines.
        super().__init__(" ".join(message.split()))
        self.code = code  # the gRPC status code the gateway reported, 0 if none


class EtcdUnavailable(EtcdError):
    """No endpoint could be reached, a call timed out, or the connection dropped. After a write,
    this means the outcome is unknown: re-read before retrying a compare-and-set."""


class Compacted(EtcdError):
    """The watch's start revision is older than the store's compaction point: the events in
    between are gone, so the watcher must re-list (get_prefix) and watch from the new revision."""

    def __init__(self, message: str, compact_revision: int) -> None:
        super().__init__(message)
        self.compact_revision = compact_revision


class LeaseExpired(EtcdError):
    """The lease does not exist any more (it expired or was revoked); its keys are deleted."""


@dataclass(frozen=True)
class KV:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int


@dataclass(frozen=True)
class Event:
    type: str  # "PUT" or "DELETE"; a DELETE event carries only key and mod_revision
    kv: KV


@dataclass(frozen=True)
class WatchBatch:
    """One watch response. ``revision`` is the server's revision when it was sent; a batch with no
    events is a progress notification (every change up to ``revision`` has been delivered)."""

    revision: int
    events: tuple[Event, ...]

    @property
    def next_revision(self) -> int:
        """Where to resume after this batch. With events that is past the last event, not past
        ``revision``: a watcher still catching up gets the current revision in its headers
        before it has been sent every event up to it."""
        if self.events:
            return self.events[-1].kv.mod_revision + 1
        return self.revision + 1


def parse_endpoint(url: str) -> tuple[str, int]:
    """``http://host:port`` -> (host, port). Only plain HTTP: the gateway's TLS needs client
    certificates this client does not manage."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise EtcdError(f"etcd endpoint {url!r} is invalid: expected http://HOST:PORT")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise EtcdError(f"etcd endpoint {url!r} has an invalid port") from None
    return parts.hostname, port


def b64(data: bytes | str) -> str:
    raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def key_text(raw: bytes) -> str:
    # surrogateescape: a key some other program wrote in non-UTF-8 still round-trips.
    return raw.decode("utf-8", "surrogateescape")


def prefix_range_end(prefix: bytes) -> bytes:
    """The range end that selects every key starting with ``prefix``: the prefix with its last
    byte incremented, dropping trailing 0xff bytes first; b"\\0" (no end) if nothing is left,
    which is etcd's spelling of "every key from here on"."""
    end = bytearray(prefix)
    while end and end[-1] == 0xFF:
        end.pop()
    if not end:
        return b"\0"
    end[-1] += 1
    return bytes(end)


def prefix_range(prefix: str) -> Json:
    return {"key": b64(prefix), "range_end": b64(prefix_range_end(prefix.encode("utf-8", "surrogateescape")))}


def put_request(key: str, value: bytes, lease: int) -> Json:
    body: Json = {"key": b64(key), "value": b64(value)}
    if lease:
        body["lease"] = str(lease)
    return body


def txn(compare: Json, success: Json) -> Json:
    return {"compare": [compare], "success": [success]}


def compare_revision(key: str, target: str, revision: int) -> Json:
    """A compare that holds when the key's CREATE or MOD revision equals ``revision`` (a create
    revision of 0 means the key does not exist)."""
    field = {"CREATE": "create_revision", "MOD": "mod_revision"}[target]
    return {"key": b64(key), "target": target, "result": "EQUAL", field: str(revision)}


def kv_from_json(obj: Json) -> KV:
    return KV(
        key=key_text(unb64(obj.get("key", ""))),
        value=unb64(obj.get("value", "")),
        create_revision=int(obj.get("create_revision", 0)),
        mod_revision=int(obj.get("mod_revision", 0)),
        lease=int(obj.get("lease", 0)),
    )


def header_revision(obj: Json) -> int:
    return int(obj.get("header", {}).get("revision", 0))


def _error(code: int, message: str) -> EtcdError:
    text = message if message.startswith("etcd") else f"etcd: {message}"
    if code in (GRPC_UNAVAILABLE, GRPC_DEADLINE_EXCEEDED):
        return EtcdUnavailable(text, code)
    return EtcdError(text, code)


def decode_unary(status: int, body: bytes) -> Json:
    """A unary call's JSON answer, or the error it carries."""
    try:
        obj = json.loads(body)
    except ValueError:
        obj = None
    if not isinstance(obj, dict):
        raise EtcdError(f"etcd gateway answered HTTP {status} with a body that is not a JSON object")
    if status != 200:
        message = obj.get("message") or obj.get("error") or f"HTTP {status}"
        raise _error(int(obj.get("code", 0)), str(message))
    return obj


def decode_stream_message(line: bytes) -> Json:
    """One message of a streaming answer: its ``result``, or the error it carries."""
    try:
        obj = json.loads(line)
    except ValueError:
        raise EtcdError("etcd gateway sent a stream message that is not JSON") from None
    if not isinstance(obj, dict):
        raise EtcdError("etcd gateway sent a stream message that is not a JSON object")
    return stream_result(obj)


def stream_result(obj: Json) -> Json:
    err = obj.get("error")
    if err is not None:
        if not isinstance(err, dict):
            raise _error(int(obj.get("code", 0)), str(obj.get("message") or err))
        message = str(err.get("message") or "stream error")
        http_code = int(err.get("http_code") or 0)
        # No HTTP code, or a 5xx: the stream to the server broke, not the request.
        if http_code == 0 or http_code >= 500:
            raise EtcdUnavailable(str(_error(0, message)), int(err.get("grpc_code") or 0))
        raise _error(int(err.get("grpc_code") or 0), message)
    result = obj.get("result")
    if not isinstance(result, dict):
        raise EtcdError("etcd gateway sent a stream message without a result")
    return result


def decode_watch_result(result: Json) -> WatchBatch | None:
    """A watch response -> a batch to hand on, or None for the "created" acknowledgement (whose
    header revision says nothing about which events have been sent)."""
    compact_revision = int(result.get("compact_revision", 0))
    if compact_revision:
        raise Compacted(
            f"etcd: watch start revision was compacted (oldest available revision {compact_revision})",
            compact_revision,
        )
    if result.get("canceled"):
        raise EtcdError(f"etcd canceled the watch: {result.get('cancel_reason') or 'no reason given'}")
    if result.get("created"):
        return None
    events = tuple(
        Event(type=str(ev.get("type", "PUT")), kv=kv_from_json(ev.get("kv", {})))
        for ev in result.get("events", ())
    )
    return WatchBatch(revision=header_revision(result), events=events)


class LineSplitter:
    """Reassembles newline-separated stream messages from arbitrary chunks of the body."""

    def __init__(self) -> None:
        self._partial = b""

    def feed(self, data: bytes) -> list[bytes]:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        return [line for line in lines if line.strip()]
