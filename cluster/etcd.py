"""A small synchronous etcd v3 client over etcd's JSON gateway (HTTP/1.1, standard library).

Why not gRPC: the gateway is served by etcd itself on the client port, so plain ``http.client``
reaches the whole API we need (KV, txn, leases, watch) with no new dependency; the JSON shapes
live in ``etcd_wire``.

Connections: every unary call opens a fresh connection. That costs a TCP handshake but makes
the client thread-safe and immune to stale kept-alive connections after etcd restarts, and it
makes the failover rule simple: if an endpoint cannot be *connected to*, the next is tried; a
connection that drops after a request was sent is only retried elsewhere for reads, because a
write may have been applied (the caller gets EtcdUnavailable and must re-read). A member that is
down without refusing (its machine off, its cable cut) answers nothing at all, so connecting
gives up after CONNECT_TIMEOUT_S while another endpoint is left to try, not after the whole
request timeout: a failover must fit well inside a lease's TTL, or every host's lease expires
the moment the member it talked to vanishes.

Watch: a streaming POST read from a raw socket through h11 (already a dependency), because
``http.client`` responses are unusable after a socket timeout and the watcher needs a short
timeout to notice its stop flag. TCP keepalive finds a peer that vanished without a FIN, since a
healthy watch may be silent for minutes; it must find it within seconds, because until then the
watcher's view is frozen without any error (the stream is simply quiet).
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator, Sequence

import h11

from meshns.cluster.etcd_wire import (
    GRPC_NOT_FOUND,
    KV,
    Compacted,
    EtcdError,
    EtcdUnavailable,
    Event,
    Json,
    LeaseExpired,
    LineSplitter,
    WatchBatch,
    b64,
    compare_revision,
    decode_stream_message,
    decode_unary,
    decode_watch_result,
    header_revision,
    kv_from_json,
    parse_endpoint,
    prefix_range,
    put_request,
    stream_result,
    txn,
)

__all__ = ["KV", "Compacted", "Etcd", "EtcdError", "EtcdUnavailable", "Event", "LeaseExpired", "WatchBatch"]

STOP_POLL_S = 1.0  # how often a silent watch looks at its stop flag
_RECV_BYTES = 65536
# Keepalive probes on the watch socket: a dead peer is noticed after about idle + intvl * cnt.
_KEEPALIVE = ((socket.TCP_KEEPIDLE, 3), (socket.TCP_KEEPINTVL, 1), (socket.TCP_KEEPCNT, 3))
# Connecting to an endpoint when another is left to try (the last one gets the full timeout).
CONNECT_TIMEOUT_S = 1.0


def _why(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


class Etcd:
    def __init__(self, endpoints: Sequence[str], timeout_s: float = 5.0,
                 connect_timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        if isinstance(endpoints, str) or not endpoints:
            raise EtcdError("etcd endpoints must be a non-empty list of http://HOST:PORT")
        self._endpoints = [parse_endpoint(url) for url in endpoints]
        self._timeout_s = timeout_s
        self._connect_timeout_s = min(connect_timeout_s, timeout_s)
        self._current = 0  # the endpoint that answered last: tried first next time

    @property
    def endpoints(self) -> list[str]:
        return [f"http://{host}:{port}" for host, port in self._endpoints]

    # -- key-value ------------------------------------------------------------------------------

    def get(self, key: str) -> KV | None:
        kvs = self._post("/v3/kv/range", {"key": b64(key)}, idempotent=True).get("kvs", [])
        return kv_from_json(kvs[0]) if kvs else None

    def get_prefix(self, prefix: str) -> tuple[list[KV], int]:
        """Every key under ``prefix`` in key order, and the revision they were read at: a watch
        from that revision + 1 misses nothing that happened after the listing."""
        reply = self._post("/v3/kv/range", prefix_range(prefix), idempotent=True)
        return [kv_from_json(kv) for kv in reply.get("kvs", [])], header_revision(reply)

    def put(self, key: str, value: bytes, lease: int = 0) -> int:
        return header_revision(self._post("/v3/kv/put", put_request(key, value, lease)))

    def delete(self, key: str) -> bool:
        return int(self._post("/v3/kv/deleterange", {"key": b64(key)}).get("deleted", 0)) > 0

    def delete_prefix(self, prefix: str) -> int:
        return int(self._post("/v3/kv/deleterange", prefix_range(prefix)).get("deleted", 0))

    def create(self, key: str, value: bytes, lease: int = 0) -> bool:
        """Put only if the key does not exist. False if it does (nothing written)."""
        return self._txn(compare_revision(key, "CREATE", 0), {"request_put": put_request(key, value, lease)})

    def replace(self, key: str, value: bytes, mod_revision: int, lease: int = 0) -> bool:
        """Put only if the key is still at ``mod_revision``. False if it changed or is gone."""
        return self._txn(compare_revision(key, "MOD", mod_revision), {"request_put": put_request(key, value, lease)})

    def delete_if(self, key: str, mod_revision: int) -> bool:
        """Delete only if the key is still at ``mod_revision``."""
        return self._txn(compare_revision(key, "MOD", mod_revision), {"request_delete_range": {"key": b64(key)}})

    def _txn(self, compare: Json, success: Json) -> bool:
        # "succeeded" is left out of the answer when it is false.
        return bool(self._post("/v3/kv/txn", txn(compare, success)).get("succeeded", False))

    def compact(self, revision: int) -> None:
        """Drop history before ``revision`` (watches starting earlier get Compacted)."""
        self._post("/v3/kv/compaction", {"revision": str(revision)})

    # -- leases ---------------------------------------------------------------------------------

    def lease_grant(self, ttl_s: int) -> int:
        reply = self._post("/v3/lease/grant", {"TTL": str(ttl_s)})
        lease_id = int(reply.get("ID", 0))
        if not lease_id:
            raise EtcdError(f"etcd granted no lease: {reply.get('error') or 'no reason given'}")
        return lease_id

    def lease_keepalive(self, lease_id: int) -> int:
        """Renew the lease once; its TTL afterwards. LeaseExpired if the lease is gone."""
        # A streaming RPC on the gateway: one request in the body, one message back, then the
        # stream ends because the request body ended.
        reply = self._post("/v3/lease/keepalive", {"ID": str(lease_id)}, idempotent=True)
        ttl = int(stream_result(reply).get("TTL", 0))
        if ttl <= 0:
            raise LeaseExpired(f"etcd lease {lease_id:x} has expired or was revoked")
        return ttl

    def lease_revoke(self, lease_id: int) -> None:
        """Revoke the lease and delete its keys; no error if it is already gone."""
        try:
            self._post("/v3/lease/revoke", {"ID": str(lease_id)}, idempotent=True)
        except EtcdError as exc:
            if exc.code != GRPC_NOT_FOUND:
                raise

    # -- cluster --------------------------------------------------------------------------------

    def status(self) -> int:
        """The store's current revision; a cheap health probe."""
        return header_revision(self._post("/v3/maintenance/status", {}, idempotent=True))

    # -- watch ----------------------------------------------------------------------------------

    def watch(self, prefix: str, start_revision: int, stop: threading.Event) -> Iterator[WatchBatch]:
        """Every change under ``prefix`` from ``start_revision`` on, batch by batch in revision
        order, plus progress notifications (batches with no events). Returns when ``stop`` is
        set (noticed within about STOP_POLL_S); raises Compacted if ``start_revision`` is gone,
        EtcdUnavailable when the stream breaks. Resume from ``batch.next_revision``."""
        create: Json = {**prefix_range(prefix), "start_revision": str(start_revision), "progress_notify": True}
        body = json.dumps({"create_request": create}).encode()
        sock, where = self._connect_any()
        with sock:
            yield from self._watch_stream(sock, where, body, stop)

    def _watch_stream(self, sock: socket.socket, where: str, body: bytes,
                      stop: threading.Event) -> Iterator[WatchBatch]:
        conn = h11.Connection(h11.CLIENT)
        headers = [("Host", where), ("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        out = conn.send(h11.Request(method="POST", target="/v3/watch", headers=headers)) or b""
        out += conn.send(h11.Data(data=body)) or b""
        out += conn.send(h11.EndOfMessage()) or b""
        try:
            sock.sendall(out)
        except OSError as exc:
            raise EtcdUnavailable(f"etcd at {where}: watch request failed: {_why(exc)}") from exc
        sock.settimeout(STOP_POLL_S)
        headers_by = time.monotonic() + self._timeout_s
        status = 0
        error_body = b""
        lines = LineSplitter()
        while not stop.is_set():
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise EtcdUnavailable(f"etcd at {where}: watch stream broke: {_why(exc)}") from exc
            if event is h11.NEED_DATA:
                try:
                    conn.receive_data(sock.recv(_RECV_BYTES))
                except TimeoutError as exc:
                    if exc.errno is not None:  # ETIMEDOUT: keepalive probes went unanswered
                        raise EtcdUnavailable(f"etcd at {where}: watch stream broke: {_why(exc)}") from exc
                    if not status and time.monotonic() > headers_by:
                        raise EtcdUnavailable(f"etcd at {where}: no answer to the watch request") from None
                except OSError as exc:
                    raise EtcdUnavailable(f"etcd at {where}: watch stream broke: {_why(exc)}") from exc
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                if status != 200:
                    error_body += bytes(event.data)
                    continue
                for line in lines.feed(bytes(event.data)):
                    batch = decode_watch_result(decode_stream_message(line))
                    if batch is not None:
                        yield batch
                        if stop.is_set():
                            return
            elif isinstance(event, h11.EndOfMessage):
                if status != 200:
                    decode_unary(status, error_body)
                raise EtcdUnavailable(f"etcd at {where} ended the watch stream")
            elif isinstance(event, h11.ConnectionClosed):
                raise EtcdUnavailable(f"etcd at {where} closed the watch connection")

    # -- transport ------------------------------------------------------------------------------

    def _order(self) -> list[int]:
        n = len(self._endpoints)
        return [(self._current + i) % n for i in range(n)]

    def _connect_timeout(self, attempt: int) -> float:
        """Short while another endpoint is left to try; the whole timeout for the last one."""
        return self._connect_timeout_s if attempt < len(self._endpoints) - 1 else self._timeout_s

    def _connect_any(self) -> tuple[socket.socket, str]:
        failures = []
        for attempt, idx in enumerate(self._order()):
            host, port = self._endpoints[idx]
            try:
                sock = socket.create_connection((host, port), timeout=self._connect_timeout(attempt))
            except OSError as exc:
                failures.append(f"{host}:{port}: {_why(exc)}")
                continue
            sock.settimeout(self._timeout_s)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for option, value in _KEEPALIVE:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
            self._current = idx
            return sock, f"{host}:{port}"
        raise EtcdUnavailable("etcd is unreachable: " + "; ".join(failures))

    def _post(self, path: str, payload: Json, *, idempotent: bool = False) -> Json:
        body = json.dumps(payload).encode()
        failures = []
        for attempt, idx in enumerate(self._order()):
            host, port = self._endpoints[idx]
            conn = http.client.HTTPConnection(host, port, timeout=self._connect_timeout(attempt))
            try:
                try:
                    conn.connect()
                except OSError as exc:
                    failures.append(f"{host}:{port}: {_why(exc)}")
                    continue
                assert conn.sock is not None
                conn.sock.settimeout(self._timeout_s)
                try:
                    conn.request("POST", path, body, {"Content-Type": "application/json"})
                    response = conn.getresponse()
                    data = response.read()
                except (OSError, http.client.HTTPException) as exc:
                    if idempotent:
                        failures.append(f"{host}:{port}: {_why(exc)}")
                        continue
                    raise EtcdUnavailable(
                        f"etcd at {host}:{port} dropped {path} after it was sent (outcome unknown): {_why(exc)}"
                    ) from exc
            finally:
                conn.close()
            self._current = idx
            return decode_unary(response.status, data)
        raise EtcdUnavailable("etcd is unreachable: " + "; ".join(failures))
