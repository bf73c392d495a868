"""Tests of the benchmark's pure parts: parsers (on recorded tool output), percentile, rendering,
ratios and the bar's verdicts. Run with `.venv/bin/pytest scripts/bench`."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import measure, parse, render, report

WRK_OUT = """Running 2s test @ http://127.0.0.1:18089/1k
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   733.44us  419.99us   5.42ms   88.61%
    Req/Sec    22.36k     4.97k   37.65k    85.71%
  46723 requests in 2.10s, 56.32MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  22258.10
Transfer/sec:     26.83MB
"""

H2LOAD_OUT = """finished in 3.00s, 1000.00 req/s, 1.21MB/s
requests: 2000 total, 2000 started, 2000 done, 1998 succeeded, 2 failed, 0 errored, 0 timeout
status codes: 1998 2xx, 0 3xx, 0 4xx, 2 5xx
traffic: 2.41MB (2528000) total, 552.23KB (565488) headers (space savings 0.00%), 2.92MB (3063808) data
"""


def test_wrk_summary() -> None:
    w = parse.parse_wrk(WRK_OUT)
    assert w.requests == 46723
    assert w.duration_s == pytest.approx(2.10)
    assert w.rps == pytest.approx(46723 / 2.10)
    assert w.bytes_read == pytest.approx(56.32 * 1024**2)
    assert (w.socket_errors, w.non_2xx, w.errors) == (3, 4, 7)


def test_wrk_without_errors_and_missing_summary() -> None:
    clean = "\n".join(line for line in WRK_OUT.splitlines() if "errors" not in line and "Non-2xx" not in line)
    assert parse.parse_wrk(clean).errors == 0
    with pytest.raises(ValueError, match="no summary"):
        parse.parse_wrk("unable to connect to 10.0.0.1:80 Connection refused\n")


@pytest.mark.parametrize(("text", "seconds"), [("2.10s", 2.1), ("733.44us", 733.44e-6), ("1.01ms", 1.01e-3),
                                                ("1.00m", 60.0)])
def test_durations(text: str, seconds: float) -> None:
    assert parse.parse_duration_s(text) == pytest.approx(seconds)


def test_sizes() -> None:
    assert parse.parse_size("812B") == 812
    assert parse.parse_size("1.5KB") == 1536
    assert parse.parse_size("2GB") == 2 * 1024**3
    with pytest.raises(ValueError):
        parse.parse_size("lots")


def test_h2load_summary() -> None:
    s = parse.parse_h2load_summary(H2LOAD_OUT)
    assert (s.total, s.succeeded, s.failed, s.errored, s.timeout, s.status_2xx) == (2000, 1998, 2, 0, 0, 1998)


def test_h2load_log_counts_failures_and_skips_partial_lines() -> None:
    log = parse.parse_h2load_log("100\t200\t900\n101\t-1\t5\n102\t503\t700\n103\t200\t1100\n104\t20")
    assert log.durations_us == (900, 1100)
    assert log.failed == 2
    assert (log.first_start_us, log.last_start_us) == (100, 103)


def test_percentile_nearest_rank() -> None:
    values = list(range(1, 101))  # 1..100
    assert parse.percentile(values, 50) == 50
    assert parse.percentile(values, 90) == 90
    assert parse.percentile(values, 99) == 99
    assert parse.percentile(values, 100) == 100
    assert parse.percentile([7.0], 99) == 7.0
    assert parse.percentile([3, 1, 2], 50) == 2  # order of the input does not matter
    with pytest.raises(ValueError):
        parse.percentile([], 50)


def test_latency_ms_from_log() -> None:
    log = parse.RequestLog(tuple(range(1000, 101000, 1000)), 0)  # 1..100 ms
    assert parse.latency_ms(log) == {"p50": 50.0, "p90": 90.0, "p99": 99.0}


def test_proc_stat_with_awkward_command_name() -> None:
    # comm may hold spaces and ')': fields are counted from the last ')'.
    fields = ["S"] + ["0"] * 10 + ["150", "25"] + ["0"] * 30
    stat = "4242 (we) ird) " + " ".join(fields)
    assert parse.proc_cpu_ticks(stat) == 175


def test_proc_status_hwm() -> None:
    status = "Name:\tpython\nVmPeak:\t  50000 kB\nVmHWM:\t   33952 kB\nVmRSS:\t   30000 kB\n"
    assert parse.proc_status_kb(status, "VmHWM") == 33952
    with pytest.raises(ValueError):
        parse.proc_status_kb("Name:\tx\n", "VmHWM")


def test_median() -> None:
    assert parse.median([3, 1, 2]) == 2
    assert parse.median([4, 1, 3, 2]) == 2.5


def test_haproxy_client_config() -> None:
    tls = render.HaproxyTls("/t/client.pem", "/t/ca.pem", "server.bench.invalid")
    text = render.haproxy_client(user="haproxy", group="haproxy", outbound_port=15001, tls=tls,
                                 plain_dst="10.250.128.6")
    assert "nbthread 1" in text
    assert "bind 0.0.0.0:15001" in text
    # Original destination, TLS with a client certificate, the server's name checked.
    assert ("server s 0.0.0.0:0 ssl crt /t/client.pem ca-file /t/ca.pem verify required "
            "verifyhost server.bench.invalid") in text
    assert "use_backend original_dst_plain if { dst 10.250.128.6 }" in text
    plain = render.haproxy_client(user="haproxy", group="haproxy", outbound_port=15001, tls=None)
    assert " ssl " not in plain
    assert "original_dst_plain" not in plain


def test_haproxy_server_config() -> None:
    tls = render.HaproxyTls("/t/server.pem", "/t/ca.pem", "server.bench.invalid")
    text = render.haproxy_server(user="haproxy", group="haproxy", inbound_port=15006, app_port=80, tls=tls)
    assert "bind 0.0.0.0:15006 ssl crt /t/server.pem ca-file /t/ca.pem verify required" in text
    assert "server app 127.0.0.1:80" in text
    plain = render.haproxy_server(user="haproxy", group="haproxy", inbound_port=15006, app_port=80, tls=None)
    assert "ssl" not in plain.split("frontend", 1)[1]


def test_nginx_conf() -> None:
    text = render.nginx_conf(root="/t/www", run_dir="/t/run/a")
    assert "worker_processes 1;" in text
    assert "pid /t/run/a/nginx.pid;" in text
    assert "root /t/www;" in text
    assert "listen 80;" in text
    assert text.count("{") == text.count("}")


def test_intercept_rules_are_meshns_plan_for_another_uid() -> None:
    rules = render.intercept_rules(proxy_uid=104, proxy_gid=107)
    lines = render.rule_lines(rules)
    assert "-A MESHNS_REDIRECT -p tcp -m comment --comment \"meshns: to outbound listener\" " \
           "-j REDIRECT --to-ports 15001" in lines
    assert any("--uid-owner 104" in line and line.endswith("-j RETURN") for line in lines)
    assert any("--gid-owner 107" in line for line in lines)
    assert not any("1337" in line for line in lines)
    assert any("REDIRECT --to-ports 15006" in line for line in lines)


def test_peer_authentication() -> None:
    text = render.peer_authentication_disable("plain")
    assert "kind: PeerAuthentication" in text
    assert "namespace: plain" in text
    assert "mode: DISABLE" in text


def _rounds() -> list[dict[str, report.Figures]]:
    def one(scale: float) -> dict[str, report.Figures]:
        return {
            "rps/direct": {"rps": 20000 * scale}, "rps/meshns": {"rps": 4000 * scale},
            "rps/haproxy": {"rps": 5000 * scale}, "rps/floor": {"rps": 4000 * scale / 0.4},
            "fixed/floor": {"p50_ms": 0.3, "p90_ms": 0.4, "p99_ms": 0.6,
                            "cpu_s_per_1k": {"client floor": 0.05, "server floor": 0.04}},
            "fixed/direct": {"p50_ms": 0.2, "p90_ms": 0.3, "p99_ms": 0.5},
            "fixed/meshns": {"p50_ms": 0.6, "p90_ms": 0.8 * scale, "p99_ms": 2.5,
                             "cpu_s_per_1k": {"client sidecar": 0.08, "server sidecar": 0.12 * scale}},
            "fixed/haproxy": {"p50_ms": 0.4, "p90_ms": 0.5, "p99_ms": 0.9,
                              "cpu_s_per_1k": {"client haproxy": 0.02, "server haproxy": None}},
            "bulk/direct": {"mb_s": 1000.0}, "bulk/meshns": {"mb_s": 300.0}, "bulk/haproxy": {"mb_s": 250.0},
            "bulk_plain/meshns": {"mb_s": 950.0}, "bulk_plain/haproxy": {"mb_s": 800.0},
        }

    return [one(1.0), one(1.2), one(0.9)]


def test_medians_ratios_and_bar() -> None:
    med = report.medians(_rounds())
    assert med["rps/meshns"]["rps"] == 4000
    assert med["fixed/meshns"]["cpu_s_per_1k"]["server sidecar"] == pytest.approx(0.12)
    assert med["fixed/haproxy"]["cpu_s_per_1k"]["server haproxy"] is None
    rat = report.ratios(med)
    assert rat["meshns"]["rps_vs_haproxy"] == pytest.approx(0.8)
    assert rat["meshns"]["rps_vs_direct"] == pytest.approx(0.2)
    assert rat["meshns"]["added_p90_ms"] == pytest.approx(0.5)
    assert rat["meshns"]["bulk_plain_vs_direct"] == pytest.approx(0.95)
    verdicts = report.bar(med, rat, {"meshns": {"client sidecar": 34.0, "server sidecar": 41.0}})
    # The seven targets of the mesh path, then the two of scale (not run here: not measured).
    assert [v.met for v in verdicts] == [False, True, False, False, False, True, True, None, None]
    assert verdicts[3].measured == pytest.approx(0.12)  # the worse sidecar is checked
    assert verdicts[4].measured == 41.0
    # The floor: against HAProxy and direct, and meshns against it (CPU: the busier of each pair).
    assert rat["floor"]["rps_vs_haproxy"] == pytest.approx(2.0)
    assert rat["meshns"]["rps_vs_floor"] == pytest.approx(0.4)
    assert rat["meshns"]["cpu_vs_floor"] == pytest.approx(0.12 / 0.05)
    assert rat["floor"]["added_p90_ms"] == pytest.approx(0.1)
    assert rat["floor"]["bulk_tls_vs_direct"] is None  # the floor runs the request rows only


def test_ratios_are_taken_within_each_round_then_their_median() -> None:
    # The machine runs at a different speed each round; meshns and HAProxy drift with it.
    rounds = [{"rps/meshns": {"rps": m}, "rps/haproxy": {"rps": h}, "fixed/direct": {"p90_ms": d},
               "fixed/meshns": {"p90_ms": mp}}
              for m, h, d, mp in ((100, 100, 0.2, 0.9), (200, 210, 0.1, 0.6), (150, 140, 0.4, 1.5))]
    rat, per = report.round_ratios(rounds)
    assert [p["meshns"]["rps_vs_haproxy"] for p in per] == pytest.approx([1.0, 200 / 210, 150 / 140])
    assert rat["meshns"]["rps_vs_haproxy"] == pytest.approx(1.0)
    # (the ratio of the medians would pair round 3's meshns with round 1's HAProxy: 150 / 140)
    assert report.ratios(report.medians(rounds))["meshns"]["rps_vs_haproxy"] == pytest.approx(150 / 140)
    assert rat["meshns"]["added_p90_ms"] == pytest.approx(0.7)
    assert rat["meshns"]["bulk_tls_vs_haproxy"] is None  # not measured in any round
    verdicts = report.bar(report.medians(rounds), rat, {}, per_round=per)
    assert verdicts[0].met is True and verdicts[0].rounds == pytest.approx((1.0, 200 / 210, 150 / 140))
    assert "median of rounds: 1.00, 0.95, 1.07" in report.bar_text(verdicts)
    assert report.round_ratios([]) == (report.ratios({}), [])


def test_bar_reports_unmeasured() -> None:
    rat = report.ratios({})
    verdicts = report.bar({}, rat, {})
    assert len(verdicts) == 9
    assert all(v.met is None and v.word == "not measured" for v in verdicts)


def test_table_mentions_every_system() -> None:
    med = report.medians(_rounds())
    text = report.table(med, report.ratios(med), {"meshns": {"client sidecar": 34.0}})
    first = text.splitlines()[0]
    for system in report.SYSTEMS:
        assert system in first
    assert "34.0" in text
    assert "0.80" in text  # meshns/haproxy max req/s
    assert "floor/haproxy 2.00" in text and "meshns/floor 0.40" in text and "meshns/floor 2.40" in text


def test_the_floor_runs_the_request_rows_only() -> None:
    assert "floor" in report.KIND_SYSTEMS["rps"] and "floor" in report.KIND_SYSTEMS["fixed"]
    assert "floor" not in report.KIND_SYSTEMS["bulk"] and "floor" not in report.KIND_SYSTEMS["bulk_plain"]


# ---- the scale section ----------------------------------------------------------------------

LIST_JSON = """[
  {"name": "srv", "ip": "10.250.0.2", "state": "ready", "phase": "running", "sidecar": "running", "app": "running",
   "age_s": 9.0},
  {"name": "scale-001", "ip": "10.250.0.5", "state": "ready", "phase": "running", "sidecar": "running",
   "app": "none", "age_s": 3.1},
  {"name": "scale-002", "ip": "10.250.0.6", "state": "creating", "phase": "unknown", "sidecar": "none",
   "app": "unknown", "age_s": 0.2},
  {"name": "scale-003", "ip": "10.250.0.7", "state": "ready", "phase": "running", "sidecar": "dead",
   "app": "none", "age_s": 2.0},
  {"name": "scale-004", "ip": "10.250.0.8", "state": "ready", "phase": "running", "sidecar": "running",
   "app": "none", "age_s": 1.0}
]"""


def test_ready_pods_counts_only_the_named_ready_ones_with_a_sidecar() -> None:
    names = {f"scale-{i:03d}" for i in range(1, 6)}
    assert parse.ready_pods(LIST_JSON, names) == 2  # 002 still creating, 003's sidecar dead, 005 absent
    assert parse.ready_pods("[]", names) == 0
    with pytest.raises(ValueError):
        parse.ready_pods("{}", names)


MANYCONNS_OUT = (
    '{"wanted": 1000, "opened": 998, "first_ok": 998, "second_ok": 997, "closed_clean": 997, '
    '"failures": {"connect": {"TimeoutError": 2}, "second": {"status \'HTTP/1.1 503\'": 1}}, '
    '"examples": ["connect #17: TimeoutError: "], "seconds": {"open": 1.52, "held": 2.1, "second": 0.4, '
    '"close": 0.2}}\n')


def test_parse_manyconns() -> None:
    held = parse.parse_manyconns("manyconns: a warning first\n" + MANYCONNS_OUT)
    assert (held.wanted, held.opened, held.answered) == (1000, 998, 997)
    assert held.failures == {"connect": {"TimeoutError": 2}, "second": {"status 'HTTP/1.1 503'": 1}}
    assert held.examples == ("connect #17: TimeoutError: ",)
    assert held.seconds["open"] == pytest.approx(1.52)
    with pytest.raises(ValueError):
        parse.parse_manyconns("")


def test_proc_memory() -> None:
    status = "Name:\tpython\nVmHWM:\t   93952 kB\nVmRSS:\t   90000 kB\n"
    assert parse.proc_memory_kb(status) == (90000, 93952)


def _scale(pods: int = 100, conns: int = 10_000, *, ready: int | None = None, answered: int | None = None,
           create_ms: tuple[float, ...] | None = None, rss: float = 120.0) -> report.Scale:
    times = create_ms if create_ms is not None else tuple(float(300 + i) for i in range(pods))
    return report.Scale(
        pods=report.PodScale(wanted=pods, create_ms=times, failed=pods - len(times),
                             ready=pods if ready is None else ready, delete_s=12.5),
        idle=report.IdleScale(wanted=conns, opened=conns, answered=conns if answered is None else answered,
                              active=conns, rss_before_mb=35.0, rss_held_mb=rss - 2, rss_peak_mb=rss, open_s=30.0,
                              failures={}),
        seconds=240.0)


def test_pod_scale_figures() -> None:
    f = _scale(create_ms=(1700.0, 1500.0, 1600.0, 2400.0, 1550.0, 1650.0, 1800.0, 1750.0, 1580.0, 1620.0),
               pods=10).pods
    assert f is not None
    assert f.figures() == {"median_ms": 1635.0, "p90_ms": 1800.0, "max_ms": 2400.0}
    empty = report.PodScale(wanted=3, create_ms=(), failed=3, ready=0, delete_s=None)
    assert empty.figures() == {"median_ms": None, "p90_ms": None, "max_ms": None}


def _scale_verdicts(scale: report.Scale | None) -> list[report.Verdict]:
    verdicts = report.bar({}, report.ratios({}), {}, scale)
    assert len(verdicts) == 9
    return verdicts[7:]


def test_scale_bar_at_full_size() -> None:
    create, rss = _scale_verdicts(_scale())
    assert create.target == "median create->ready < 500 ms" and create.unit == "ms"
    assert rss.target == "10,000 idle connections < 150 MB RSS per sidecar" and rss.unit == "MB"
    assert (create.met, create.word) == (True, "met") and create.measured == pytest.approx(349.5)
    assert (rss.met, rss.measured, rss.word) == (True, 120.0, "met")
    slow, fat = _scale_verdicts(_scale(create_ms=tuple(1700.0 for _ in range(100)), rss=151.0))
    assert (slow.met, slow.word, fat.met, fat.word) == (False, "NOT met", False, "NOT met")


def test_scale_bar_needs_every_pod_ready_and_every_connection_answered() -> None:
    create, rss = _scale_verdicts(_scale(ready=99, answered=9_999))
    assert create.measured is not None and create.measured < 500 and create.met is False
    assert rss.measured == 120.0 and rss.met is False
    failed, _ = _scale_verdicts(_scale(create_ms=tuple(300.0 for _ in range(98)), ready=98))
    assert failed.met is False


def test_scale_bar_at_quick_size_is_shown_not_judged() -> None:
    create, rss = _scale_verdicts(_scale(pods=10, conns=1000))
    assert (create.met, create.of, create.word) == (None, "10 pods", "not at full size")
    assert (rss.met, rss.of, rss.word) == (None, "1,000 connections", "not at full size")
    assert create.measured is not None and rss.measured == 120.0
    text = report.bar_text([create, rss])
    assert "(of 10 pods: not comparable)" in text and "(of 1,000 connections: not comparable)" in text
    assert all(v.word == "not measured" for v in _scale_verdicts(None))


def test_scale_table_and_document() -> None:
    scale = _scale(pods=10, conns=1000, answered=998)
    text = report.scale_table(scale)
    assert "quick size" in text.splitlines()[0]
    assert "10 pods in turn" in text and "median 304 ms" in text and "max 309 ms" in text
    assert "10 of 10" in text
    assert "998 of 1,000 answered" in text
    assert "120.0 (held 118.0, before 35.0)" in text
    assert "full size" in report.scale_table(_scale()).splitlines()[0]
    assert report.scale_table(None) == "scale: not run"
    doc = report.scale_document(scale)
    assert doc is not None and doc["full_size"] is False
    assert doc["pods"]["median_ms"] == pytest.approx(304.5) and doc["pods"]["ready"] == 10
    assert len(doc["pods"]["create_ms"]) == 10
    assert doc["idle"]["answered"] == 998 and doc["idle"]["rss_peak_mb"] == 120.0
    assert report.scale_document(None) is None
    full = report.document(machine={}, settings={}, rounds=[], med={}, rat=report.ratios({}), rss_peak_mb={},
                           verdicts=report.bar({}, report.ratios({}), {}, scale), notes=[], scale=scale)
    assert full["scale"] == doc
    assert [b["verdict"] for b in full["bar"]][7:] == ["not at full size", "not at full size"]


def test_chart_with_the_scale_panels(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    med = report.medians(_rounds())
    report.write_chart(tmp_path / "bench.png", med, {"meshns": {"client sidecar": 34.0}}, _scale())
    assert (tmp_path / "bench.png").stat().st_size > 10_000


@pytest.mark.parametrize(("line", "want"), [
    ("cpu  5822085 39906 1799140 8505730 34175 0 256122 849118 0 0", (849118, 5822085 + 39906 + 1799140 + 8505730
                                                                      + 34175 + 0 + 256122 + 849118)),
    ("cpu  10 0 5 85", (0, 100)),  # an old kernel without the later counters
])
def test_cpu_line(line: str, want: tuple[int, int]) -> None:
    assert measure.parse_cpu_line(line.split()) == want


@pytest.mark.parametrize(("before", "after", "share"), [
    ((100, 1000), (150, 1200), 0.25),
    ((100, 1000), (100, 1200), 0.0),
    ((100, 1000), (100, 1000), 0.0),  # no time passed
])
def test_steal_share(before: tuple[int, int], after: tuple[int, int], share: float) -> None:
    assert measure.steal_share(before, after) == pytest.approx(share)


def test_arrivals_spread_and_clumped() -> None:
    even = parse.arrivals([0, 1000, 2000, 3000, 4000])
    assert even == parse.Arrivals(1000, 0.0)
    # h2load's connections opened together: 4 at once every 4 ms
    burst = parse.arrivals([0, 2, 3, 5, 4000, 4001, 4003, 4004])
    assert burst is not None and burst.median_gap_us == 2 and burst.clumped == 6 / 7
    assert parse.arrivals([7]) is None
    assert parse.arrivals([]) is None


def test_h2load_log_keeps_every_start() -> None:
    log = parse.parse_h2load_log("300\t200\t900\n100\t-1\t5\n200\t200\t700\n")
    assert log.starts_us == (300, 100, 200)
    assert parse.arrivals(log.starts_us) == parse.Arrivals(100, 0.0)


def test_speed_spread() -> None:
    assert measure.speed_spread([300.0, 450.0, 330.0]) == 1.5
    assert measure.speed_spread([300.0]) == 1.0
    assert measure.speed_spread([]) == 1.0
    assert measure.calibrate_ms(1000) > 0
