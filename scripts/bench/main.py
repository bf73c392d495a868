"""meshns benchmark: direct vs meshns vs HAProxy, measured in one run, interleaved.

Run through scripts/bench.sh (root, packages). Builds its own namespaces and a private mesh,
measures each case round after round (direct, meshns, HAProxy, direct, ... so drift hits all
three alike), reports medians, and removes everything it made on any exit, Ctrl-C included.
Exit status: 0 when the benchmark ran (whether or not the targets are met), 1 when it failed,
130 when interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import grp
import json
import os
import pwd
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType

from bench import measure, parse, render, report, topology
from bench.topology import Mesh, PlainNet, Runner

REPO = Path(__file__).resolve().parents[2]
LOCK = Path("/run/meshns-bench.lock")
RATE = 1000.0  # Istio's published latency setup: 1000 req/s, 16 connections, 1 KB
CONNS = 16
HAPROXY_USER = "haproxy"  # Debian's haproxy package makes this system user: a uid of its own


@dataclass(frozen=True)
class Settings:
    rounds: int
    rps_s: int  # closed-loop max rate run
    fixed_s: int  # fixed-rate latency run
    bulk_s: int
    bulk_conns: int
    warmup_requests: int

    @staticmethod
    def full() -> Settings:
        return Settings(rounds=3, rps_s=10, fixed_s=10, bulk_s=8, bulk_conns=4, warmup_requests=5000)

    @staticmethod
    def quick() -> Settings:
        # CI smoke: one round, short runs; fixed rate 3 s still gives 3000 latency samples.
        return Settings(rounds=1, rps_s=2, fixed_s=3, bulk_s=2, bulk_conns=4, warmup_requests=500)


@dataclass
class Route:
    """One way from a client to the nginx: how to run the load generator, the URL base, and the
    proxy processes on the way (label -> how to find the pid now)."""

    system: str
    runner: Runner
    base: str
    proxies: dict[str, Callable[[], int]] = field(default_factory=dict)


class Progress:
    def __init__(self, total: int) -> None:
        self.total, self.done, self.t0 = total, 0, time.monotonic()

    def step(self, text: str) -> None:
        self.done += 1
        print(f"[{self.done}/{self.total}] {text} ...", end="", flush=True)

    def result(self, text: str) -> None:
        print(f" {text}  ({time.monotonic() - self.t0:.0f} s)", flush=True)


class Bench:
    def __init__(self, settings: Settings, tmp: Path, progress: Progress) -> None:
        self.s, self.tmp, self.progress = settings, tmp, progress
        self.www, self.tls, self.logs = tmp / "www", tmp / "tls", tmp / "logs"
        self.net = PlainNet(self.logs)
        self.mesh = Mesh(tmp / "mesh-state")
        self.routes: dict[str, Route] = {}
        self.rounds: list[dict[str, report.Figures]] = []
        self.rss_peak_mb: dict[str, dict[str, float]] = {}
        self.notes: list[str] = []

    # ---- setup -------------------------------------------------------------------------------

    def files(self) -> None:
        for d in (self.www, self.logs):
            d.mkdir(mode=0o755)
        self.tls.mkdir(mode=0o700)  # keys: root only (HAProxy reads them before dropping to its uid)
        (self.www / render.SMALL_PATH.lstrip("/")).write_bytes(os.urandom(render.SMALL_SIZE))
        (self.www / render.BULK_PATH.lstrip("/")).write_bytes(os.urandom(render.BULK_SIZE))
        self._certs()

    def _certs(self) -> None:
        """A throwaway CA and one EC P-256 leaf per HAProxy (meshns's workload keys are EC too)."""
        t = self.tls
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        topology.run(["openssl", "req", "-x509", *ec, "-keyout", f"{t}/ca.key", "-out", f"{t}/ca.pem",
                      "-days", "2", "-subj", "/CN=meshns bench CA"])
        for name in ("client", "server"):
            dns = f"{name}.bench.invalid"
            (t / f"{name}.ext").write_text(render.openssl_ext(dns=dns, uri=f"spiffe://bench.invalid/{name}"))
            topology.run(["openssl", "req", *ec, "-keyout", f"{t}/{name}.key", "-out", f"{t}/{name}.csr",
                          "-subj", f"/CN={dns}"])
            topology.run(["openssl", "x509", "-req", "-in", f"{t}/{name}.csr", "-CA", f"{t}/ca.pem",
                          "-CAkey", f"{t}/ca.key", "-CAcreateserial", "-days", "2",
                          "-extfile", f"{t}/{name}.ext", "-out", f"{t}/{name}.crt"])
            pem = (t / f"{name}.crt").read_text() + (t / f"{name}.key").read_text()
            (t / f"{name}.pem").write_text(pem)

    def _nginx_conf(self, instance: str) -> Path:
        run_dir = self.tmp / "run" / instance
        run_dir.mkdir(parents=True)
        conf = run_dir / "nginx.conf"
        conf.write_text(render.nginx_conf(root=str(self.www), run_dir=str(run_dir)))
        return conf

    def plain(self) -> None:
        """Direct and HAProxy namespaces on their own bridge, nginx in each server namespace,
        meshns's interception rules and one HAProxy in each HAProxy namespace."""
        self.net.create_bridge()
        ips = {role: self.net.add(role, host) for role, host in
               (("dcli", 2), ("dsrv", 3), ("hcli", 4), ("hsrv", 5), ("hsrvp", 6))}
        ns = {role: topology.PLAIN_PREFIX + role for role in ips}
        for role in ("dsrv", "hsrv", "hsrvp"):
            self.net.start(ns[role], f"nginx-{role}", "nginx", "-c", str(self._nginx_conf(role)),
                           "-g", "daemon off;")
        uid, gid = pwd.getpwnam(HAPROXY_USER).pw_uid, grp.getgrnam(HAPROXY_USER).gr_gid
        rules = render.intercept_rules(proxy_uid=uid, proxy_gid=gid)
        for role in ("hcli", "hsrv", "hsrvp"):
            got = self.net.install_rules(ns[role], rules)
            if got != render.rule_lines(rules):
                raise RuntimeError(f"interception rules in {ns[role]} differ from the plan:\n" + "\n".join(got))
        self.notes.append(f"HAProxy namespaces use meshns's own interception plan with uid/gid {uid}/{gid} "
                          f"({HAPROXY_USER}) as the exempt proxy user")
        t = self.tls
        client_tls = render.HaproxyTls(f"{t}/client.pem", f"{t}/ca.pem", "server.bench.invalid")
        server_tls = render.HaproxyTls(f"{t}/server.pem", f"{t}/ca.pem", "server.bench.invalid")
        configs = {
            "hcli": render.haproxy_client(user=HAPROXY_USER, group=HAPROXY_USER, outbound_port=15001,
                                          tls=client_tls, plain_dst=ips["hsrvp"]),
            "hsrv": render.haproxy_server(user=HAPROXY_USER, group=HAPROXY_USER, inbound_port=15006,
                                          app_port=80, tls=server_tls),
            "hsrvp": render.haproxy_server(user=HAPROXY_USER, group=HAPROXY_USER, inbound_port=15006,
                                           app_port=80, tls=None),
        }
        haproxy: dict[str, int] = {}
        for role, text in configs.items():
            cfg = self.tmp / "run" / f"haproxy-{role}.cfg"
            cfg.write_text(text)
            topology.run(["haproxy", "-c", "-q", "-f", str(cfg)])
            haproxy[role] = self.net.start(ns[role], f"haproxy-{role}", "haproxy", "-db", "-f", str(cfg)).pid
        direct = PlainNet.runner(ns["dcli"])
        hcli = PlainNet.runner(ns["hcli"])
        self.routes["direct"] = Route("direct", direct, f"http://{ips['dsrv']}:80")
        self.routes["haproxy"] = Route("haproxy", hcli, f"http://{ips['hsrv']}:80", {
            "client haproxy": lambda: haproxy["hcli"], "server haproxy": lambda: haproxy["hsrv"]})
        self.routes["haproxy_plain"] = Route("haproxy", hcli, f"http://{ips['hsrvp']}:80", {
            "client haproxy": lambda: haproxy["hcli"], "server haproxy (no TLS)": lambda: haproxy["hsrvp"]})
        for key in ("direct", "haproxy", "haproxy_plain"):
            self._wait_ok(self.routes[key])

    def meshns(self) -> None:
        """The private mesh: nginx behind service web (mTLS, the default) and behind webp in
        namespace `plain`, where a PeerAuthentication turns mTLS off; one client pod reaches both,
        so its sidecar picks TLS or plaintext per destination, as Istio's auto mTLS does."""
        m = self.mesh
        m.state_dir.mkdir(mode=0o700)
        # The policy goes in before any pod exists, so every sidecar starts with it (no wait for a
        # reload, and no pooled TLS connection to webp from before it can exist).
        m.run("apply", "-f", "-", input=render.peer_authentication_disable("plain"))
        nginx = ["nginx", "-c", "", "-g", "daemon off;"]
        # A short drain keeps delete quick; not 0, which the sidecar's config refuses (it then never
        # listens and create fails on the outbound probe, though the CLI accepts 0).
        drain = ("--drain-timeout", "0.5")
        for pod, service, identity_ns in (("srv", "web:80", "default"), ("srvp", "webp:80", "plain")):
            nginx[2] = str(self._nginx_conf(f"pod-{pod}"))
            m.run("create", pod, "--service", service, "--namespace", identity_ns, *drain,
                  "--", *nginx)
        m.run("create", "cli", *drain)
        cli = m.runner("cli")
        self.routes["meshns"] = Route("meshns", cli, "http://web:80", {
            "client sidecar": m.sidecar("cli"), "server sidecar": m.sidecar("srv")})
        self.routes["meshns_plain"] = Route("meshns", cli, "http://webp:80", {
            "client sidecar": m.sidecar("cli"), "server sidecar (no mTLS)": m.sidecar("srvp")})
        for key in ("meshns", "meshns_plain"):
            self._wait_ok(self.routes[key])
        self.check_mesh_tls("after setup")

    def check_mesh_tls(self, when: str) -> None:
        """The two mesh paths must differ in exactly what the issue compares: TLS or not. Read
        from the server sidecars' own counters (TLS handshakes accepted vs. connections)."""
        srv = self.mesh.status("srv")["sidecar_stats"]
        srvp = self.mesh.status("srvp")["sidecar_stats"]
        if not srv["tls_in"] or srvp["tls_in"] or not srvp["inbound"]["accepted"]:
            raise RuntimeError(f"mesh paths are not mTLS / plaintext as intended {when}: srv tls_in="
                               f"{srv['tls_in']}, srvp tls_in={srvp['tls_in']} accepted={srvp['inbound']['accepted']}")
        self.notes.append(f"meshns {when}: web's server sidecar accepted {srv['tls_in']} mTLS connection(s); "
                          f"webp's (namespace 'plain', PeerAuthentication DISABLE) {srvp['inbound']['accepted']} "
                          "connection(s), none TLS")
        cli = self.mesh.status("cli")["sidecar_stats"]
        self.notes.append(f"meshns {when}: response bodies spliced (plaintext, kernel to kernel): client sidecar "
                          f"{cli.get('http_spliced', 0)}, webp's server sidecar {srvp.get('http_spliced', 0)}")

    def _wait(self, ok: Callable[[], bool], what: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not ok():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}")
            time.sleep(0.1)

    def _wait_ok(self, path: Route) -> None:
        """A few requests must succeed before anything is measured (HAProxy and nginx start
        asynchronously; the first mesh request also sets up the pools)."""
        url = path.base + render.SMALL_PATH

        def ok() -> bool:
            done = topology.run(path.runner.argv("curl", "-sf", "-o", "/dev/null", "--max-time", "2", url),
                                check=False, env=path.runner.env)
            return done.returncode == 0

        self._wait(ok, f"{url} to answer through {path.system}")

    def warm_up(self) -> None:
        for path in self.routes.values():
            topology.run(path.runner.argv("h2load", "--h1", f"-c{CONNS}", f"-n{self.s.warmup_requests}",
                                          path.base + render.SMALL_PATH), env=path.runner.env, timeout=120)

    # ---- measuring ---------------------------------------------------------------------------

    def _pids(self, path: Route) -> dict[str, int]:
        return {label: find() for label, find in path.proxies.items()}

    def _samples(self, pids: dict[str, int]) -> dict[str, measure.ProcSample]:
        return {label: measure.sample(pid) for label, pid in pids.items()}

    def _after(self, path: Route, before: dict[str, measure.ProcSample]) -> dict[str, float | None]:
        """CPU seconds per proxy since ``before``; records peak RSS as well."""
        after = self._samples(self._pids(path))
        peaks = self.rss_peak_mb.setdefault(path.system, {})
        cpu: dict[str, float | None] = {}
        for label, b in before.items():
            a = after[label]
            cpu[label] = measure.cpu_seconds(b, a)
            if cpu[label] is None:
                self.notes.append(f"{path.system} {label} was restarted during a run (pid {b.pid} -> {a.pid})")
            peaks[label] = max(peaks.get(label, 0.0), a.hwm_kb * 1024 / 1e6)
        return cpu

    def case(self, kind: str, system: str) -> report.Figures:
        path = self.routes[f"{system}_plain" if kind == "bulk_plain" else system]
        before = self._samples(self._pids(path))
        if kind == "rps":
            w = measure.wrk(path.runner, path.base + render.SMALL_PATH, connections=CONNS, seconds=self.s.rps_s)
            cpu = self._after(path, before)
            self.progress.result(f"{w.rps:,.0f} req/s" + (f" ({w.errors} errors)" if w.errors else ""))
            return {"rps": w.rps, "requests": w.requests, "duration_s": w.duration_s, "errors": w.errors,
                    "cpu_s_per_1k": _per_1k(cpu, w.requests)}
        if kind == "fixed":
            f = measure.h2load_fixed(path.runner, path.base + render.SMALL_PATH, connections=CONNS, rate=RATE,
                                     seconds=self.s.fixed_s, log_path=self.tmp / "h2load.log")
            cpu = self._after(path, before)
            n = len(f.log.durations_us)
            if n == 0:
                raise RuntimeError(f"{system}: no request succeeded at {RATE:g} req/s")
            lat = parse.latency_ms(f.log)
            # Anything but a 2xx: streams that failed (-1 in the log) and error statuses alike.
            failed = max(f.log.failed, f.summary.total - f.summary.status_2xx)
            self.progress.result("p50 {p50:.2f}  p90 {p90:.2f}  p99 {p99:.2f} ms".format(**lat)
                                 + (f" ({failed} failed)" if failed else ""))
            return {"rate": n / self.s.fixed_s, "requests": n, "failed": failed,
                    **{f"{q}_ms": v for q, v in lat.items()},
                    "cpu_s": cpu, "cpu_s_per_1k": _per_1k(cpu, n + f.log.failed)}
        w = measure.wrk(path.runner, path.base + render.BULK_PATH, connections=self.s.bulk_conns,
                        seconds=self.s.bulk_s)
        self._after(path, before)
        mb_s = w.requests * render.BULK_SIZE / w.duration_s / 1e6 if w.duration_s else 0.0
        self.progress.result(f"{mb_s:,.0f} MB/s" + (f" ({w.errors} errors)" if w.errors else ""))
        return {"mb_s": mb_s, "requests": w.requests, "duration_s": w.duration_s, "errors": w.errors}

    def run_rounds(self) -> None:
        what = {
            "rps": f"max req/s (wrk -c{CONNS}, {self.s.rps_s} s)",
            "fixed": f"fixed-rate {RATE:g} req/s (h2load -c{CONNS}, {self.s.fixed_s} s)",
            "bulk": f"bulk 1 MiB, mTLS (wrk -c{self.s.bulk_conns}, {self.s.bulk_s} s)",
            "bulk_plain": f"bulk 1 MiB, no mTLS (wrk -c{self.s.bulk_conns}, {self.s.bulk_s} s)",
        }
        for r in range(self.s.rounds):
            figures: dict[str, report.Figures] = {}
            self.rounds.append(figures)
            for kind in report.KINDS:
                for system in report.KIND_SYSTEMS[kind]:
                    label = what[kind] if not (system == "direct" and kind == "bulk") else what["bulk"].replace(
                        "mTLS", "no TLS")
                    self.progress.step(f"round {r + 1}/{self.s.rounds} {system:<8} {label}")
                    figures[f"{kind}/{system}"] = self.case(kind, system)
        self.check_mesh_tls("after the rounds")

    # ---- teardown ----------------------------------------------------------------------------

    def cleanup(self) -> None:
        self.net.stop()
        with contextlib.suppress(Exception):
            self.mesh.teardown()
        topology.force_clean()


def _per_1k(cpu: dict[str, float | None], requests: int) -> dict[str, float | None]:
    return {k: (v / requests * 1000 if v is not None and requests else None) for k, v in cpu.items()}


def total_steps(s: Settings) -> int:
    return 4 + s.rounds * sum(len(v) for v in report.KIND_SYSTEMS.values()) + 1


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    with LOCK.open("w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit("bench: another benchmark run holds " + str(LOCK)) from None
        yield


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.sh", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one short round (CI smoke, under a minute)")
    ap.add_argument("--out", type=Path, default=REPO / "bench-results", help="where bench.json/png go")
    ap.add_argument("--cleanup-only", action="store_true", help="remove whatever a killed run left, then exit")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench: run as root (namespaces, iptables)", file=sys.stderr)
        return 1
    with _lock():
        if args.cleanup_only:
            found = topology.force_clean()
            if found:
                print("bench: removed leftovers: " + "; ".join(found), file=sys.stderr)
            return 0
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    settings = Settings.quick() if args.quick else Settings.full()
    stale = topology.force_clean()  # what an earlier run killed with SIGKILL left behind
    if stale:
        print("bench: removed leftovers of an earlier run: " + "; ".join(stale), file=sys.stderr)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    t0 = time.monotonic()
    load_before = measure.loadavg()
    tmp = Path(tempfile.mkdtemp(prefix=topology.TMP_PREFIX))
    tmp.chmod(0o755)  # nginx workers (nobody) read www/ under it
    progress = Progress(total_steps(settings))
    bench = Bench(settings, tmp, progress)
    rc = 0
    try:
        print(f"bench: {'quick' if args.quick else 'full'} run, {settings.rounds} round(s); "
              f"load average {load_before:.2f} on {os.cpu_count()} cores", flush=True)
        progress.step("certificates, nginx files")
        bench.files()
        progress.result("done")
        progress.step("direct and HAProxy namespaces, nginx, interception rules, HAProxy")
        bench.plain()
        progress.result("done")
        progress.step("private mesh: pods srv (web, mTLS), srvp (webp, no mTLS), cli")
        bench.meshns()
        progress.result("done")
        progress.step(f"warm-up ({settings.warmup_requests} requests per path)")
        bench.warm_up()
        progress.result("done")
        bench.run_rounds()
        progress.step(f"report to {args.out}")
        text = _report(bench, settings, args, load_before, t0)
        progress.result("done")
        print("\n" + text, flush=True)
    except KeyboardInterrupt:
        print("\nbench: interrupted; cleaning up", file=sys.stderr)
        rc = 130
    except Exception:
        print("\nbench: FAILED\n" + traceback.format_exc(), file=sys.stderr)
        _dump_logs(bench)
        rc = 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        bench.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
        left = topology.leftovers()
        if left:
            print("bench: could not remove: " + "; ".join(left), file=sys.stderr)
            rc = rc or 1
    outcome = {0: "finished", 130: "interrupted"}.get(rc, "failed")
    print(f"bench: {outcome} after {time.monotonic() - t0:.0f} s; "
          f"{'machine clean' if not left else 'leftovers above'}", flush=True)
    return rc


def _dump_logs(bench: Bench) -> None:
    for log in sorted(bench.logs.glob("*.log")):
        tail = log.read_text(errors="replace")[-1500:]
        if tail.strip():
            print(f"----- {log.name} -----\n{tail}", file=sys.stderr)
    pods = bench.mesh.state_dir / "pods"
    for log in sorted(pods.glob("*/*.log")) if pods.is_dir() else []:
        print(f"----- {log.parent.name}/{log.name} -----\n{log.read_text(errors='replace')[-1500:]}",
              file=sys.stderr)


def _report(bench: Bench, settings: Settings, args: argparse.Namespace, load_before: float, t0: float) -> str:
    """Writes bench.json, bench.png and bench.txt; returns the text for the terminal."""
    med = report.medians(bench.rounds)
    rat = report.ratios(med)
    verdicts = report.bar(med, rat, bench.rss_peak_mb)
    load_after = measure.loadavg()
    notes = [*bench.notes,
             "HAProxy: nbthread 1 per process (one meshns sidecar is one Python process), mode http, "
             "TLS 1.3, EC P-256 certificates, client verifies the server name, server requires a client "
             "certificate; HAProxy's default buffers (tune.bufsize 16 KiB), which on a busy machine cost it bulk "
             "throughput (more wake-ups per MiB); no access log (meshns keeps its defaults: metrics and "
             "access log on)"]
    if max(load_before, load_after) > 0.5:
        notes.append(f"machine not idle: load average {load_before:.2f} before, {load_after:.2f} after; "
                     "figures are noisy")
    doc = report.document(
        machine=measure.machine_facts(REPO),
        settings={**asdict(settings), "mode": "quick" if args.quick else "full", "rate": RATE,
                  "connections": CONNS, "load_before": load_before, "load_after": load_after,
                  "wall_s_before_report": round(time.monotonic() - t0, 1)},
        rounds=bench.rounds, med=med, rat=rat, rss_peak_mb=bench.rss_peak_mb, verdicts=verdicts, notes=notes)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    report.write_chart(out / "bench.png", med, bench.rss_peak_mb)
    text = report.table(med, rat, bench.rss_peak_mb) + "\n\n" + report.bar_text(verdicts) + "\n"
    text += "".join(f"note: {n}\n" for n in notes)
    (out / "bench.txt").write_text(text)
    return text


def _main() -> None:
    # Print progress as it happens even when stdout is a pipe (CI logs).
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    sys.exit(main())


if __name__ == "__main__":
    _main()

