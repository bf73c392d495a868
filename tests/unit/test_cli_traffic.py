"""Rates, error share and latency quantiles from two scrapes; access-log lines; CLI formatting."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from meshns.cli import ops_render
from meshns.netns import podlog
from meshns.netns.traffic import histogram_quantile, parse_prometheus, pod_traffic, top_pairs


def series(reporter: str, src: str, dst_wl: str, svc: str, code: int, n: float) -> str:
    return (f'istio_requests_total{{reporter="{reporter}",source_workload="{src}",destination_workload="{dst_wl}",'
            f'destination_service="{svc}",response_code="{code}",response_flags="-"}} {n}\n')


def buckets(reporter: str, src: str, dst_wl: str, svc: str, counts: dict[str, float]) -> str:
    return "".join(
        f'istio_request_duration_milliseconds_bucket{{reporter="{reporter}",source_workload="{src}",'
        f'destination_workload="{dst_wl}",destination_service="{svc}",response_code="200",le="{le}"}} {c}\n'
        for le, c in counts.items())


def test_parse_prometheus_labels_escapes_comments_timestamps() -> None:
    text = ('# HELP x y\n# TYPE x counter\nx_total 3\n'
            'y{a="1",b="q\\"uo\\\\te"} 2.5 1700000000000\n'
            'z{le="+Inf"} 7\nbroken{ 1\n\n')
    got = parse_prometheus(text)
    assert got[("x_total", ())] == 3.0
    assert got[("y", (("a", "1"), ("b", 'q"uo\\te')))] == 2.5
    assert got[("z", (("le", "+Inf"),))] == 7.0
    assert len(got) == 3


@pytest.mark.parametrize(("before", "after", "window", "rps", "err"), [
    # inbound 10 (2 errors) + outbound 10 (0) over 2 s
    (series("destination", "c", "web", "web", 200, 5) + series("destination", "c", "web", "web", 500, 1),
     series("destination", "c", "web", "web", 200, 13) + series("destination", "c", "web", "web", 500, 3)
     + series("source", "web", "db", "db", 200, 10), 2.0, 10.0, 0.1),
    # a counter that went down was reset: its new value is the delta
    (series("destination", "c", "web", "web", 200, 100), series("destination", "c", "web", "web", 200, 4),
     1.0, 4.0, 0.0),
    # nothing happened: no error rate at all (not 0%)
    (series("source", "c", "w", "s", 200, 1), series("source", "c", "w", "s", 200, 1), 1.0, 0.0, None),
])
def test_pod_traffic(before: str, after: str, window: float, rps: float, err: float | None) -> None:
    t = pod_traffic(parse_prometheus(before), parse_prometheus(after), window)
    assert t.rps == pytest.approx(rps)
    assert t.error_rate == (None if err is None else pytest.approx(err))


@pytest.mark.parametrize(("q", "counts", "want"), [
    (0.5, {1.0: 0, 5.0: 10, 10.0: 10, math.inf: 10}, 3.0),  # all in (1, 5]: halfway
    (0.95, {1.0: 0, 5.0: 10, 10.0: 20, math.inf: 20}, 9.5),  # rank 19 of 20
    (0.5, {10.0: 0, math.inf: 4}, 10.0),  # in +Inf: the highest finite bound
    (0.5, {10.0: 0, math.inf: 0}, None),  # no observations
    (0.5, {}, None),
    (0.5, {5.0: 4, math.inf: 4}, 2.5),  # first bucket interpolates from 0
])
def test_histogram_quantile(q: float, counts: dict[float, float], want: float | None) -> None:
    got = histogram_quantile(q, counts)
    assert got == (None if want is None else pytest.approx(want))


def test_top_pairs_prefers_source_and_estimates_latency() -> None:
    client0 = series("source", "client", "r1", "reviews", 200, 0)
    client1 = (series("source", "client", "r1", "reviews", 200, 18) + series("source", "client", "r1", "reviews", 503, 2)
               + buckets("source", "client", "r1", "reviews", {"5": 0, "10": 10, "50": 20, "+Inf": 20}))
    # the server saw the same 20 requests: not counted again; plus 4 from an unmeshed caller
    r1_0 = ""
    r1_1 = series("destination", "client", "r1", "reviews", 200, 20) + series("destination", "unknown", "r1", "reviews", 200, 4)
    pairs = top_pairs([(parse_prometheus(client0), parse_prometheus(client1)),
                       (parse_prometheus(r1_0), parse_prometheus(r1_1))], 2.0)
    assert [(p.source, p.destination, p.reporter) for p in pairs] == [
        ("client", "reviews", "source"), ("unknown", "reviews", "destination")]
    top = pairs[0]
    assert top.rps == pytest.approx(10.0) and top.success_rate == pytest.approx(0.9)
    assert top.p50_ms == pytest.approx(10.0) and top.p95_ms == pytest.approx(46.0)
    assert pairs[1].rps == pytest.approx(2.0) and pairs[1].p50_ms is None
    assert set(top.as_dict()) == {"source", "destination", "reporter", "rps", "success_rate", "p50_ms", "p95_ms",
                                  "requests"}


def test_top_pairs_falls_back_to_workload_without_service() -> None:
    after = series("source", "client", "web", "unknown", 200, 3)
    (p,) = top_pairs([({}, parse_prometheus(after))], 1.0)
    assert (p.destination, p.requests) == ("web", 3.0)


@pytest.mark.parametrize(("line", "is_access"), [
    ('{"time":"t","kind":"http","reporter":"source","method":"GET","path":"/","status":200}\n', True),
    ('2024-01-01 INFO meshns.access {"reporter":"source","status":200}\n', True),
    ("2024-01-01T00:00:00 supervisor pod=web running\n", False),
    ('{"msg":"something else"}\n', False),
    ('{"reporter": broken\n', False),
])
def test_access_record(line: str, is_access: bool) -> None:
    assert (podlog.access_record(line) is not None) == is_access


def test_read_lines_without_follow_keeps_a_partial_last_line(tmp_path: Path) -> None:
    f = tmp_path / "pod.log"
    f.write_text("a\nb\nc")
    assert list(podlog.read_lines(f, follow=False)) == ["a\n", "b\n", "c"]


def test_read_lines_follow_stops_when_told(tmp_path: Path) -> None:
    f = tmp_path / "pod.log"
    f.write_text("a\n")
    calls = iter([False, True])
    got = list(podlog.read_lines(f, follow=True, stop=lambda: next(calls)))
    assert got == ["a\n"]


def test_formatting() -> None:
    assert ops_render.fmt_rate(None) == "-" and ops_render.fmt_rate(3.14159) == "3.1"
    assert ops_render.fmt_rate(1234.5) == "1234"
    assert ops_render.fmt_pct(None) == "-" and ops_render.fmt_pct(0.125) == "12.5%"
    assert ops_render.fmt_ms(None) == "-" and ops_render.fmt_ms(2.25) == "2.2ms" and ops_render.fmt_ms(120.4) == "120ms"
    detail = {"name": "web", "ip": "10.0.0.2", "services": ["reviews:9080"], "sidecar": "running",
              "sidecar_restarts": 1, "app": "running",
              "traffic": {"rps": 5.0, "error_rate": 0.2, "window_s": 1.0,
                          "inbound": {"rps": 5.0}, "outbound": {"rps": 0.0}}}
    lines = ops_render.status_table([detail, dict(detail, name="idle", services=[], traffic=None)]).splitlines()
    assert lines[0].split() == ["NAME", "IP", "SERVICES", "SIDECAR", "RESTARTS", "APP", "RPS", "ERR%"]
    assert lines[1].split() == ["web", "10.0.0.2", "reviews:9080", "running", "1", "running", "5.0", "20.0%"]
    assert lines[2].split() == ["idle", "10.0.0.2", "-", "running", "1", "running", "-", "-"]
    assert ops_render.status_table([]) == "no pods"
    sample = {"window_s": 2.0, "pods": 2, "pairs": [{"source": "c", "destination": "reviews", "rps": 10.0,
                                                     "success_rate": 0.9, "p50_ms": 10.0, "p95_ms": 46.0}]}
    text = ops_render.top_table(sample).splitlines()
    assert text[2].split() == ["SOURCE", "DESTINATION", "RPS", "SUCCESS", "P50", "P95"]
    assert text[3].split() == ["c", "reviews", "10.0", "90.0%", "10ms", "46ms"]


def test_podspec_drain_timeout_round_trips_and_old_rows_read() -> None:
    from meshns.model import PodSpec

    assert PodSpec.from_json('{"app": ["x"]}').drain_timeout_s == 5.0
    assert PodSpec.from_json(PodSpec(drain_timeout_s=2.5).to_json()).drain_timeout_s == 2.5
