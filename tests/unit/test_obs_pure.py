"""Observability decisions without sockets: metric labels, trace headers, access log lines, admin
routing of the Envoy-style paths, the new config keys."""

from __future__ import annotations

import json
import logging

import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshns.dataplane import accesslog, admin_ops
from meshns.dataplane.admin import AdminOps, AdminState, metrics_route, route
from meshns.dataplane.config import config_from_dict
from meshns.dataplane.labels import PeerIndex, http_labels, inbound_peers, outbound_peers, tcp_labels
from meshns.dataplane.metrics import Health, Metrics
from meshns.dataplane.stats import Stats
from meshns.dataplane.tracing import rewrite_trace
from meshns.errors import UserError
from meshns.snapshot import Endpoint, Security, Service, ServicePort, Snapshot

SNAP = Snapshot(version=3, pod="client-1", services=(
    Service("reviews", "10.96.0.10", (ServicePort(9080, 8080),),
            endpoints=(Endpoint("reviews-1", "10.0.0.11"), Endpoint("reviews-2", "10.0.0.12"))),
    Service("web", "10.96.0.20", (ServicePort(80, 8000),), endpoints=(Endpoint("client-1", "10.0.0.5"),)),
))
IDX = PeerIndex(SNAP)
ID_CLIENT = "spiffe://cluster.local/ns/default/sa/client-1"
ID_R1 = "spiffe://cluster.local/ns/default/sa/reviews-1"
IDX_ID = PeerIndex(Snapshot(version=3, pod="client-1", services=SNAP.services, workloads=(
    Endpoint("reviews-1", "10.0.0.11", identity=ID_R1), Endpoint("client-1", "10.0.0.5", identity=ID_CLIENT)),
    security=Security(identity=ID_CLIENT)))


@pytest.mark.parametrize(("case", "got", "want"), [
    ("outbound to a service VIP",
     http_labels(outbound_peers(IDX, "client-1", "10.96.0.10", 9080, "reviews"), "reviews-2", 200, "", ""),
     ("source", "client-1", "unknown", "reviews-2", "unknown", "reviews", "http", "200", "", "-", "unknown")),
    ("outbound, no endpoint answered",
     http_labels(outbound_peers(IDX, "client-1", "10.96.0.10", 9080, "reviews"), "unknown", 503, "", "UH"),
     ("source", "client-1", "unknown", "unknown", "unknown", "reviews", "http", "503", "", "UH", "unknown")),
    ("outbound TCP to a known pod's service port",
     tcp_labels(p := outbound_peers(IDX, "client-1", "10.0.0.11", 8080), p.destination_workload),
     ("source", "client-1", "unknown", "reviews-1", "unknown", "reviews", "tcp", "-", "unknown")),
    ("outbound TCP to a known pod, other port: the pod's name",
     tcp_labels(p := outbound_peers(IDX, "client-1", "10.0.0.12", 22), p.destination_workload),
     ("source", "client-1", "unknown", "reviews-2", "unknown", "reviews-2", "tcp", "-", "unknown")),
    ("outbound TCP to the unknown",
     tcp_labels(p := outbound_peers(IDX, "client-1", "93.184.216.34", 443), p.destination_workload),
     ("source", "client-1", "unknown", "unknown", "unknown", "unknown", "tcp", "-", "unknown")),
    ("inbound from a known pod to a served port",
     http_labels(p := inbound_peers(IDX, "client-1", "10.0.0.11", "10.0.0.5", 8000), p.destination_workload,
                 200, "0", "-"),
     ("destination", "reviews-1", "unknown", "client-1", "unknown", "web", "http", "200", "0", "-", "none")),
    ("inbound from an unknown client to another port",
     http_labels(p := inbound_peers(IDX, "client-1", "192.168.1.9", "10.0.0.5", 9999), p.destination_workload,
                 404, "", "DC,UC"),
     ("destination", "unknown", "unknown", "client-1", "unknown", "client-1", "http", "404", "", "DC,UC",
      "none")),
    ("mTLS, client side: own identity and the one expected at the destination",
     tcp_labels(p := outbound_peers(IDX_ID, "client-1", "10.0.0.11", 8080), p.destination_workload),
     ("source", "client-1", ID_CLIENT, "reviews-1", ID_R1, "reviews", "tcp", "-", "unknown")),
    ("mTLS, server side: the verified peer and own identity",
     http_labels(p := inbound_peers(IDX_ID, "client-1", "10.0.0.11", "10.0.0.5", 8000, ID_R1), p.destination_workload,
                 200, "", ""),
     ("destination", "reviews-1", ID_R1, "client-1", ID_CLIENT, "web", "http", "200", "", "-", "mutual_tls")),
    ("mTLS pod, plaintext client",
     http_labels(p := inbound_peers(IDX_ID, "client-1", "10.0.0.11", "10.0.0.5", 8000), p.destination_workload,
                 200, "", ""),
     ("destination", "reviews-1", "unknown", "client-1", ID_CLIENT, "web", "http", "200", "", "-", "none")),
])
def test_labels(case: str, got: tuple[str, ...], want: tuple[str, ...]) -> None:
    assert got == want, case


def bits_seq() -> object:
    n = [0]

    def bits(k: int) -> int:
        n[0] += 1
        return n[0] * 0x1111 & ((1 << k) - 1)
    return bits


TP = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize(("case", "headers", "want"), [
    ("none: a new trace and request id",
     [(b"Host", b"a"), (b"X-Foo", b"Bar")],
     [(b"Host", b"a"), (b"X-Foo", b"Bar"), (b"traceparent", b"00-%032x-%016x-01" % (0x2222, 0x1111)),
      (b"x-request-id", b"00000000-0000-4000-8000-000000003333")]),
    ("traceparent only: same trace, new parent-id, case and place kept",
     [(b"TraceParent", TP), (b"Host", b"a"), (b"X-Request-ID", b"r1")],
     [(b"TraceParent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-%016x-01" % 0x1111), (b"Host", b"a"),
      (b"X-Request-ID", b"r1")]),
    ("b3 multi: new span, old span becomes the parent",
     [(b"X-B3-TraceId", b"80f198ee56343ba8"), (b"X-B3-SpanId", b"e457b5a2e4d86bd1"), (b"X-B3-Sampled", b"1"),
      (b"x-request-id", b"r")],
     [(b"X-B3-TraceId", b"80f198ee56343ba8"), (b"X-B3-SpanId", b"%016x" % 0x1111), (b"X-B3-Sampled", b"1"),
      (b"x-request-id", b"r"), (b"x-b3-parentspanid", b"e457b5a2e4d86bd1")]),
    ("b3 multi with a parent already: replaced in place",
     [(b"x-b3-traceid", b"aa" * 8), (b"x-b3-parentspanid", b"cc" * 8), (b"x-b3-spanid", b"bb" * 8),
      (b"x-request-id", b"r")],
     [(b"x-b3-traceid", b"aa" * 8), (b"x-b3-parentspanid", b"bb" * 8), (b"x-b3-spanid", b"%016x" % 0x1111),
      (b"x-request-id", b"r")]),
    ("b3 single",
     [(b"B3", b"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90"), (b"x-request-id", b"r")],
     [(b"B3", b"80f198ee56343ba864fe8b2a57d3eff7-%016x-1-e457b5a2e4d86bd1" % 0x1111), (b"x-request-id", b"r")]),
    ("b3 single sampling only: left alone, no new trace",
     [(b"b3", b"0"), (b"x-request-id", b"r")], [(b"b3", b"0"), (b"x-request-id", b"r")]),
    ("both: one new span in each",
     [(b"traceparent", TP), (b"x-b3-traceid", b"aa" * 8), (b"x-b3-spanid", b"bb" * 8), (b"x-request-id", b"r")],
     [(b"traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-%016x-01" % 0x1111), (b"x-b3-traceid", b"aa" * 8),
      (b"x-b3-spanid", b"%016x" % 0x1111), (b"x-request-id", b"r"), (b"x-b3-parentspanid", b"bb" * 8)]),
])
def test_trace_rewrite(case: str, headers: list[tuple[bytes, bytes]], want: list[tuple[bytes, bytes]]) -> None:
    rewrite_trace(headers, bits_seq(), True)  # type: ignore[arg-type]
    assert headers == want, case


def test_server_side_keeps_existing_context_and_fills_gaps() -> None:
    hs = [(b"traceparent", TP), (b"Host", b"a")]
    rid = rewrite_trace(hs, bits_seq(), True, new_span=False)  # type: ignore[arg-type]
    assert hs[0] == (b"traceparent", TP) and hs[2][0] == b"x-request-id" and rid == hs[2][1].decode()
    hs = [(b"Host", b"a")]
    rewrite_trace(hs, bits_seq(), True, new_span=False)  # type: ignore[arg-type]
    assert [n for n, _ in hs] == [b"Host", b"traceparent", b"x-request-id"]


def test_access_line_shapes() -> None:
    http = json.loads(accesslog.http_line(
        reporter="source", source_workload="a", source_address="10.0.0.5:4000", destination_workload="b",
        destination_service="svc", destination_address="10.0.0.11:8080", method="GET", path="/x?y=1",
        authority="svc", protocol="HTTP/1.1", status=200, response_flags="-", attempts=1, duration_ms=1.23456,
        request_bytes=0, response_bytes=5, request_id="r", upstream_host="10.0.0.11:8080"))
    assert http["kind"] == "http" and http["path"] == "/x?y=1" and http["duration_ms"] == 1.235
    assert {"time", "reporter", "source_workload", "source_address", "destination_workload",
            "destination_service", "destination_address", "method", "protocol", "status", "response_flags",
            "attempts", "request_bytes", "response_bytes", "request_id", "upstream_host"} <= http.keys()
    assert http["time"].endswith("Z")
    tcp = json.loads(accesslog.tcp_line(
        reporter="destination", source_workload="a", source_address="1.2.3.4:5", destination_workload="b",
        destination_service="b", destination_address="10.0.0.5:5432", response_flags="UF", duration_ms=2,
        bytes_received=10, bytes_sent=20))
    assert (tcp["kind"], tcp["protocol"], tcp["bytes_received"], tcp["bytes_sent"]) == ("tcp", "tcp", 10, 20)


def _ops(drained: list[bool]) -> AdminOps:
    return AdminOps(prometheus=lambda: b"# metrics\n", config_dump=lambda: {"version": 3},
                    clusters=lambda: {"services": {}}, logging_get=admin_ops.logging_levels,
                    logging_set=admin_ops.set_logging, drain=lambda: drained.append(True))


def test_admin_ops_routes() -> None:
    drained: list[bool] = []
    st = AdminState("p", Stats(), ready=True, ops=_ops(drained))
    assert route(b"GET", b"/stats/prometheus", st)[2] == b"# metrics\n"
    assert json.loads(route(b"GET", b"/config_dump", st)[2]) == {"version": 3}
    assert json.loads(route(b"GET", b"/certs", st)[2])["certificates"] == []
    assert route(b"GET", b"/drain", st)[0] == 405
    assert route(b"POST", b"/drain", st)[0] == 200 and drained == [True]
    assert route(b"POST", b"/logging?level=loud", st)[0] == 400
    logger = logging.getLogger("meshns.test.obs")
    assert route(b"POST", b"/logging?level=error&logger=meshns.test.obs", st)[0] == 200
    assert logger.level == logging.ERROR
    assert json.loads(route(b"GET", b"/logging", st)[2])["loggers"]["meshns.test.obs"] == "error"
    assert route(b"GET", b"/nope", st)[0] == 404
    assert metrics_route(b"GET", b"/metrics", st)[2] == b"# metrics\n"
    assert metrics_route(b"GET", b"/stats", st)[0] == 404


def test_metrics_registry_and_health() -> None:
    m = Metrics(lambda: Health(7, 2, 1, {"reviews": (3, 1, 0, 2)}), process=False)
    labels = http_labels(outbound_peers(IDX, "client-1", "10.96.0.10", 9080, "reviews"), "reviews-1", 200, "", "")
    for _ in range(3):
        m.observe_http(labels, 3.0, 0, 120)
    assert m.http_series(labels) is m.http_series(labels)  # made once
    fams = {f.name: f for f in text_string_to_metric_families(m.exposition().decode())}
    [req] = fams["istio_requests"].samples
    assert req.value == 3 and req.labels["destination_workload"] == "reviews-1"
    assert fams["meshns_config_version"].samples[0].value == 7
    assert {s.labels["destination_service"]: s.value for s in fams["meshns_retries"].samples} == {"reviews": 3}
    assert fams["meshns_retry_budget_exhausted"].samples[0].value == 2
    buckets = [s for s in fams["istio_request_duration_milliseconds"].samples if s.name.endswith("_bucket")]
    assert [s.labels["le"] for s in buckets][:3] == ["0.5", "1.0", "5.0"] and buckets[2].value == 3


def test_config_keys() -> None:
    base = {"pod": "p", "pod_ip": "10.0.0.5"}
    cfg = config_from_dict(base)
    assert (cfg.metrics_port, cfg.access_log) == (-1, "on")
    assert config_from_dict({**base, "metrics_port": -1, "access_log": "http"}).metrics_port == -1
    with pytest.raises(UserError, match="access_log"):
        config_from_dict({**base, "access_log": "tcp"})
    with pytest.raises(UserError, match="metrics_port"):
        config_from_dict({**base, "metrics_port": -2})


def test_access_log_batch_arms_one_flush_per_batch() -> None:
    """The handler asks for a timed flush when a line starts a batch, not per line and not while
    idle (the sidecar's loop has no periodic wake-up for the access log)."""
    import io

    out = io.StringIO()
    handler = accesslog.BatchingHandler(out)
    calls: list[int] = []
    handler.on_batch = lambda: calls.append(len(handler.pending))
    handler.add("a")
    handler.add("b")
    assert calls == [1] and out.getvalue() == ""
    handler.flush()
    assert out.getvalue() == "a\nb\n"
    handler.add("c")  # a new batch
    assert calls == [1, 1]
    handler.add("x" * accesslog.BATCH_BYTES)  # the size flush writes at once, no timer needed
    assert calls == [1, 1] and out.getvalue().endswith("x\n") and handler.pending == []


def test_access_log_hook_set_while_a_batch_waits_arms_at_once() -> None:
    import io
    import logging

    handler = accesslog.BatchingHandler(io.StringIO())
    handler.add("early")
    logger = logging.getLogger(accesslog.ACCESS_LOGGER)
    saved = logger.handlers[:]
    logger.handlers[:] = [handler]
    try:
        calls: list[str] = []
        accesslog.on_batch(lambda: calls.append("armed"))
        assert calls == ["armed"]
        accesslog.on_batch(None)
        assert handler.on_batch is None
    finally:
        logger.handlers[:] = saved
