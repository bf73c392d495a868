"""meshns benchmark: direct vs meshns vs HAProxy, measured in one run, interleaved.

Beside them, for the request rows, the Python floor (bench/floor_proxy.py): a proxy pair doing
only what any Python sidecar must (uvloop, mTLS, llhttp), to split meshns's cost into the part
any Python proxy pays and the part its mesh features add.

Run through scripts/bench.sh (root, packages). Builds its own namespaces and a private mesh,
measures each case round after round (direct, meshns, HAProxy, direct, ... so drift hits all
three alike), reports medians, and removes everything it made on any exit, Ctrl-C included.
Then the scale section, in the same private mesh: pods made one after another with `meshns
create` (each timed from start to exit: create returns once the pod is ready), and one sidecar
holding many idle HTTP/1.1 keep-alive connections (its peak RSS read from /proc).
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
import resource
import shutil
import signal
import subprocess
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
FLOOR_USER = "nobody"  # the floor proxies drop to it; their namespaces' rules exempt it
FLOOR_PROXY = REPO / "scripts" / "bench" / "floor_proxy.py"
# A short drain keeps delete quick; not 0, which the sidecar's config refuses (it then never
# listens and create fails on the outbound probe, though the CLI accepts 0).
DRAIN = ("--drain-timeout", "0.5")
# Rounds whose calibration loop (measure.calibrate_ms) differs by this factor or more are noted.
SPEED_NOTE = 1.25
# Hypervisor steal above this share of the run's CPU time is noted with the figures.
STEAL_NOTE = 0.02
# The scale section: its pods' names, and the unmodified client app that holds the connections
# (the load test's; standard library only). It opens them in batches of IDLE_BATCH, each batch
# connected and answered before the next (a ramp well under the sidecar's listen backlog).
SCALE_POD = "scale-{:03d}"
IDLE_POD = "idle"
MANYCONNS = REPO / "tests" / "integration" / "apps" / "manyconns.py"
IDLE_BATCH = 250
IDLE_HOLD_S = 2.0  # held idle this long before the sidecar's memory is read


@dataclass(frozen=True)
class Settings:
    rounds: int
    rps_s: int  # closed-loop max rate run
    fixed_s: int  # fixed-rate latency run
    bulk_s: int
    bulk_conns: int
    warmup_requests: int
    scale_pods: int  # pods made one after another (create -> ready)
    idle_conns: int  # idle keep-alive connections held through one sidecar

    @staticmethod
    def full() -> Settings:
        return Settings(rounds=3, rps_s=10, fixed_s=10, bulk_s=8, bulk_conns=4, warmup_requests=5000,
                        scale_pods=report.SCALE_PODS, idle_conns=report.SCALE_CONNS)

    @staticmethod
    def quick() -> Settings:
        # CI smoke: one round, short runs; fixed rate 3 s still gives 3000 latency samples.
        return Settings(rounds=1, rps_s=2, fixed_s=3, bulk_s=2, bulk_conns=4, warmup_requests=500,
                        scale_pods=5, idle_conns=500)  # keeps --quick under a minute


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

    def tick(self, text: str) -> None:
        """A sign of life within a long step, on the step's line."""
        print(f" {text}", end="", flush=True)

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
        self.scale: report.Scale | None = None
        self.idle_client: subprocess.Popen[str] | None = None
        self.calibration_ms: list[float] = []  # measure.calibrate_ms before each round

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
        """Direct, HAProxy and floor namespaces on their own bridge, nginx in each server
        namespace, meshns's interception rules and one proxy in each HAProxy and floor namespace."""
        self.net.create_bridge()
        ips = {role: self.net.add(role, host) for role, host in
               (("dcli", 2), ("dsrv", 3), ("hcli", 4), ("hsrv", 5), ("hsrvp", 6), ("fcli", 7), ("fsrv", 8))}
        ns = {role: topology.PLAIN_PREFIX + role for role in ips}
        for role in ("dsrv", "hsrv", "hsrvp", "fsrv"):
            self.net.start(ns[role], f"nginx-{role}", "nginx", "-c", str(self._nginx_conf(role)),
                           "-g", "daemon off;")
        uid, gid = pwd.getpwnam(HAPROXY_USER).pw_uid, grp.getgrnam(HAPROXY_USER).gr_gid
        rules = render.intercept_rules(proxy_uid=uid, proxy_gid=gid)
        for role in ("hcli", "hsrv", "hsrvp"):
            self._capture(ns[role], rules)
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
        floor = self._floor(ns)
        direct = PlainNet.runner(ns["dcli"])
        hcli = PlainNet.runner(ns["hcli"])
        self.routes["direct"] = Route("direct", direct, f"http://{ips['dsrv']}:80")
        self.routes["haproxy"] = Route("haproxy", hcli, f"http://{ips['hsrv']}:80", {
            "client haproxy": lambda: haproxy["hcli"], "server haproxy": lambda: haproxy["hsrv"]})
        self.routes["haproxy_plain"] = Route("haproxy", hcli, f"http://{ips['hsrvp']}:80", {
            "client haproxy": lambda: haproxy["hcli"], "server haproxy (no TLS)": lambda: haproxy["hsrvp"]})
        self.routes["floor"] = Route("floor", PlainNet.runner(ns["fcli"]), f"http://{ips['fsrv']}:80", {
            "client floor": lambda: floor["fcli"], "server floor": lambda: floor["fsrv"]})
        for key in ("direct", "haproxy", "haproxy_plain", "floor"):
            self._wait_ok(self.routes[key])

    def _capture(self, ns: str, rules: str) -> None:
        """meshns's interception plan (render.intercept_rules) into ``ns``, checked against what
        the kernel reports back."""
        got = self.net.install_rules(ns, rules)
        if got != render.rule_lines(rules):
            raise RuntimeError(f"interception rules in {ns} differ from the plan:\n" + "\n".join(got))

    def _floor(self, ns: dict[str, str]) -> dict[str, int]:
        """The floor pair (bench/floor_proxy.py) in its namespaces, captured by meshns's own rules
        for its uid, with the HAProxy pair's certificates; returns the pids."""
        user = pwd.getpwnam(FLOOR_USER)
        rules = render.intercept_rules(proxy_uid=user.pw_uid, proxy_gid=user.pw_gid)
        t = self.tls
        args = {
            "fcli": ["client", "--listen", "15001", "--cert", f"{t}/client.pem",
                     "--server-name", "server.bench.invalid"],
            "fsrv": ["server", "--listen", "15006", "--cert", f"{t}/server.pem", "--app-port", "80"],
        }
        pids: dict[str, int] = {}
        for role, role_args in args.items():
            self._capture(ns[role], rules)
            pids[role] = self.net.start(ns[role], f"floor-{role}", sys.executable, str(FLOOR_PROXY), *role_args,
                                        "--ca", f"{t}/ca.pem", "--user", FLOOR_USER).pid
        self.notes.append(f"floor namespaces use meshns's own interception plan with uid/gid "
                          f"{user.pw_uid}/{user.pw_gid} ({FLOOR_USER}) as the exempt proxy user")
        return pids

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
        for pod, service, identity_ns in (("srv", "web:80", "default"), ("srvp", "webp:80", "plain")):
            nginx[2] = str(self._nginx_conf(f"pod-{pod}"))
            m.run("create", pod, "--service", service, "--namespace", identity_ns, *DRAIN,
                  "--", *nginx)
        m.run("create", "cli", *DRAIN)
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
        self.notes.append(f"meshns {when}: web's server sidecar accepted {srv['tls_in']} mTLS connection(s), "
                          f"{srv.get('tls_in_resumed', 0)} of them resumed sessions; "
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
            spread = parse.arrivals(f.log.starts_us)
            self.progress.result("p50 {p50:.2f}  p90 {p90:.2f}  p99 {p99:.2f} ms".format(**lat)
                                 + (f" ({failed} failed)" if failed else ""))
            return {"rate": n / self.s.fixed_s, "requests": n, "failed": failed,
                    **{f"{q}_ms": v for q, v in lat.items()},
                    "arrival_gap_us": spread.median_gap_us if spread else None,
                    "arrivals_clumped": spread.clumped if spread else None,
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
            "fixed": f"fixed-rate {RATE:g} req/s (h2load -c{CONNS} spread, {self.s.fixed_s} s)",
            "bulk": f"bulk 1 MiB, mTLS (wrk -c{self.s.bulk_conns}, {self.s.bulk_s} s)",
            "bulk_plain": f"bulk 1 MiB, no mTLS (wrk -c{self.s.bulk_conns}, {self.s.bulk_s} s)",
        }
        for r in range(self.s.rounds):
            figures: dict[str, report.Figures] = {}
            self.rounds.append(figures)
            self.calibration_ms.append(round(measure.calibrate_ms(), 1))
            for kind in report.KINDS:
                for system in report.KIND_SYSTEMS[kind]:
                    label = what[kind] if not (system == "direct" and kind == "bulk") else what["bulk"].replace(
                        "mTLS", "no TLS")
                    self.progress.step(f"round {r + 1}/{self.s.rounds} {system:<8} {label}")
                    figures[f"{kind}/{system}"] = self.case(kind, system)
        self.check_mesh_tls("after the rounds")
        self.note_arrivals()

    def note_arrivals(self) -> None:
        """How evenly the fixed-rate runs sent their requests (measure.h2load_fixed), from the
        load generator's own log: every latency row is only as meaningful as this."""
        runs = [r[f"fixed/{s}"] for r in self.rounds for s in report.SYSTEMS if f"fixed/{s}" in r]
        gaps = [float(f["arrival_gap_us"]) for f in runs if f.get("arrival_gap_us") is not None]
        clumped = [float(f["arrivals_clumped"]) for f in runs if f.get("arrivals_clumped") is not None]
        if gaps and clumped:
            self.notes.append(
                f"fixed rate: h2load's {CONNS} connections opened {measure.stagger_ms(RATE)} ms apart, so one "
                f"request about every {parse.median(gaps):.0f} us (median gap between starts, over all runs); "
                f"{max(clumped):.0%} at most of the gaps under {parse.CLUMP_US} us (timers that drifted "
                f"together); opened together, the {CONNS} would fire at once every {CONNS * 1000 / RATE:g} ms")

    # ---- scale -------------------------------------------------------------------------------

    def scale_pods(self) -> report.PodScale:
        """``scale_pods`` pods made one after another with `meshns create` (no app), each timed
        from start to exit (create returns once the pod is ready); then all listed, then all
        deleted with one `meshns delete`."""
        n = self.s.scale_pods
        names = [SCALE_POD.format(i) for i in range(1, n + 1)]
        load_before = measure.loadavg()
        times: list[float] = []
        failed = 0
        for i, name in enumerate(names, 1):
            t = time.monotonic()
            try:
                done = self.mesh.run("create", name, *DRAIN, check=False, timeout=60)
                ok, why = done.returncode == 0, (done.stdout + done.stderr).strip()[-300:]
            except subprocess.TimeoutExpired:
                ok, why = False, "no exit within 60 s"
            if ok:
                times.append((time.monotonic() - t) * 1000)
            else:
                failed += 1
                if failed <= 3:
                    self.notes.append(f"scale: meshns create {name} failed: {why}")
            if i % max(1, n // 10) == 0 and i < n:
                self.progress.tick(str(i))
        self.notes.append(f"scale: load average {load_before:.2f} at the first create, {measure.loadavg():.2f} "
                          "after the last (create->ready is wall time: anything else running stretches it)")
        ready = parse.ready_pods(self.mesh.run("list", "-o", "json").stdout, names)
        made = [p for p in self.mesh.pod_names() if p in names]
        t = time.monotonic()
        done = self.mesh.run("delete", *made, check=False, timeout=60 + 5 * len(made))
        delete_s = time.monotonic() - t
        if done.returncode != 0:
            raise RuntimeError(f"meshns delete of the scale pods failed:\n{done.stdout}{done.stderr}".strip())
        pods = report.PodScale(wanted=n, create_ms=tuple(round(ms, 1) for ms in times), failed=failed,
                               ready=ready, delete_s=round(delete_s, 2))
        f = pods.figures()
        self.progress.result(f"median {f['median_ms'] or 0:,.0f} ms  p90 {f['p90_ms'] or 0:,.0f} ms  "
                             f"max {f['max_ms'] or 0:,.0f} ms; {ready} of {n} ready")
        return pods

    def idle_conns(self) -> report.IdleScale:
        """``idle_conns`` HTTP/1.1 keep-alive connections from an unmodified client app in pod
        idle to webp (nginx, plaintext), each answered once, then all held idle at once while the
        client sidecar's memory is read from /proc; then each must answer again."""
        m, n = self.mesh, self.s.idle_conns
        _fd_room(n + 1024)  # the client app holds n sockets; its descriptor limit is inherited from us
        m.run("create", IDLE_POD, *DRAIN)
        route = Route("meshns", m.runner(IDLE_POD), "http://webp:80")
        self._wait_ok(route)
        pid = m.sidecar_pid(IDLE_POD)
        rss_before, _ = measure.memory_kb(pid)
        held_file, go_file = self.tmp / "idle-held.json", self.tmp / "idle-go"
        log = self.logs / "manyconns.log"
        # Its command line names our temp dir (the files), so force_clean finds it if we die.
        with log.open("w") as err:
            self.idle_client = subprocess.Popen(
                route.runner.argv(sys.executable, str(MANYCONNS), "client", "--target", "webp:80", "-n", str(n),
                                  "--batch", str(IDLE_BATCH), "--http", render.SMALL_PATH,
                                  "--held-file", str(held_file), "--go-file", str(go_file), "--hold-max", "300"),
                env=route.runner.env, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, text=True)
        proc = self.idle_client
        patience = 60 + n / 50  # a guard against a hang, not a figure
        self._wait(lambda: held_file.exists() or proc.poll() is not None, f"{n} connections to open",
                   timeout=patience)
        if not held_file.exists():
            raise RuntimeError(f"the client app exited before holding its connections (exit {proc.returncode}):\n"
                               + log.read_text(errors="replace")[-1500:])
        time.sleep(IDLE_HOLD_S)
        active = m.status(IDLE_POD).get("sidecar_stats", {}).get("active")
        rss_held, hwm = measure.memory_kb(pid)
        if "meshns.dataplane" not in topology.cmdline(pid):
            raise RuntimeError(f"pod {IDLE_POD}'s sidecar (pid {pid}) went away while the connections were held")
        go_file.touch()
        out, _ = proc.communicate(timeout=patience)
        self.idle_client = None
        held = parse.parse_manyconns(out)  # the pod goes with the others at teardown (one delete)
        mb = 1024 / 1e6
        idle = report.IdleScale(wanted=n, opened=held.opened, answered=held.answered,
                                active=active if isinstance(active, int) else None,
                                rss_before_mb=round(rss_before * mb, 1), rss_held_mb=round(rss_held * mb, 1),
                                rss_peak_mb=round(hwm * mb, 1), open_s=held.seconds.get("open"),
                                failures=held.failures)
        if held.examples:
            self.notes.append("scale: client app failures, e.g. " + "; ".join(held.examples[:3]))
        self.progress.result(f"peak RSS {idle.rss_peak_mb:.1f} MB; {idle.answered:,} of {n:,} answered")
        return idle

    def run_scale(self) -> None:
        t0 = time.monotonic()
        self.progress.step(f"scale: {self.s.scale_pods} pods, meshns create one after another")
        pods = self.scale_pods()
        self.progress.step(f"scale: {self.s.idle_conns:,} idle HTTP/1.1 keep-alive connections through one sidecar")
        idle = self.idle_conns()
        self.scale = report.Scale(pods=pods, idle=idle, seconds=round(time.monotonic() - t0, 1))

    # ---- teardown ----------------------------------------------------------------------------

    def cleanup(self) -> None:
        if self.idle_client is not None and self.idle_client.poll() is None:
            self.idle_client.kill()
            self.idle_client.wait()
        self.net.stop()
        with contextlib.suppress(Exception):
            self.mesh.teardown()
        topology.force_clean()


def _per_1k(cpu: dict[str, float | None], requests: int) -> dict[str, float | None]:
    return {k: (v / requests * 1000 if v is not None and requests else None) for k, v in cpu.items()}


def _fd_room(need: int) -> None:
    """Make sure programs we start may open ``need`` descriptors (raising our hard limit if we
    may: root with CAP_SYS_RESOURCE); fail clearly if not."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, need))
        except (ValueError, OSError):
            raise RuntimeError(f"the descriptor hard limit is {hard}; holding the scale section's connections "
                               f"needs {need} (raise it: ulimit -Hn {need})") from None


def total_steps(s: Settings, only: str = "all") -> int:
    scale = 2
    if only == "scale":
        return 2 + scale + 1
    return 4 + s.rounds * sum(len(v) for v in report.KIND_SYSTEMS.values()) + scale + 1


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
    ap.add_argument("--quick", action="store_true", help="one short round and a small scale section: 5 pods, "
                    "500 connections (CI smoke, under a minute)")
    ap.add_argument("--out", type=Path, default=REPO / "bench-results", help="where bench.json/png go")
    ap.add_argument("--cleanup-only", action="store_true", help="remove whatever a killed run left, then exit")
    ap.add_argument("--only", choices=("all", "scale"), default="all",
                    help="scale: only the private mesh and the scale section (pods created to ready, idle "
                         "connections held through one sidecar), for working on it; the other rows read '-'")
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
    cpu_before = measure.cpu_times()
    tmp = Path(tempfile.mkdtemp(prefix=topology.TMP_PREFIX))
    tmp.chmod(0o755)  # nginx workers (nobody) read www/ under it
    progress = Progress(total_steps(settings, args.only))
    bench = Bench(settings, tmp, progress)
    rc = 0
    try:
        only = "" if args.only == "all" else f" (only: {args.only})"
        print(f"bench: {'quick' if args.quick else 'full'} run{only}, {settings.rounds} round(s); "
              f"load average {load_before:.2f} on {os.cpu_count()} cores", flush=True)
        progress.step("certificates, nginx files")
        bench.files()
        progress.result("done")
        if args.only == "all":
            progress.step("direct and HAProxy namespaces, nginx, interception rules, HAProxy")
            bench.plain()
            progress.result("done")
        progress.step("private mesh: pods srv (web, mTLS), srvp (webp, no mTLS), cli")
        bench.meshns()
        progress.result("done")
        if args.only == "all":
            progress.step(f"warm-up ({settings.warmup_requests} requests per path)")
            bench.warm_up()
            progress.result("done")
            bench.run_rounds()
        # After the rounds: its 100 extra sidecars and 10,000 connections must not weigh on them.
        bench.run_scale()
        progress.step(f"report to {args.out}")
        text = _report(bench, settings, args, load_before, cpu_before, t0)
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


def _report(bench: Bench, settings: Settings, args: argparse.Namespace, load_before: float,
            cpu_before: tuple[int, int], t0: float) -> str:
    """Writes bench.json, bench.png and bench.txt; returns the text for the terminal."""
    med = report.medians(bench.rounds)
    rat, per_round = report.round_ratios(bench.rounds)
    verdicts = report.bar(med, rat, bench.rss_peak_mb, bench.scale, per_round)
    load_after = measure.loadavg()
    steal = measure.steal_share(cpu_before, measure.cpu_times())
    notes = list(bench.notes)
    if args.only == "all":
        notes.append("HAProxy: nbthread 1 per process (one meshns sidecar is one Python process), mode http, "
                     "TLS 1.3, EC P-256 certificates, client verifies the server name, server requires a client "
                     "certificate; HAProxy's default buffers (tune.bufsize 16 KiB), which on a busy machine cost it "
                     "bulk throughput (more wake-ups per MiB); no access log (meshns keeps its defaults: metrics and "
                     "access log on)")
    if bench.scale is not None:
        notes.append(f"scale: pods made with no app, next to the mesh's own pods srv, srvp and cli; create->ready is "
                     f"each `meshns create` from start to exit, CLI start-up included; the idle connections are "
                     f"{MANYCONNS.name}'s (tests/integration/apps) GETs of {render.SMALL_PATH} from a fresh pod "
                     f"'{IDLE_POD}' to webp (nginx, no mTLS), opened {IDLE_BATCH} at a time, held {IDLE_HOLD_S:g} s "
                     "before its sidecar's VmRSS/VmHWM are read")
    if max(load_before, load_after) > 0.5:
        notes.append(f"machine not idle: load average {load_before:.2f} before, {load_after:.2f} after; "
                     "figures are noisy")
    calib = bench.calibration_ms
    if len(calib) > 1 and measure.speed_spread(calib) >= SPEED_NOTE:
        notes.append(f"machine speed varied: the same Python loop took {', '.join(f'{c:.0f}' for c in calib)} ms "
                     f"before rounds {', '.join(str(i + 1) for i in range(len(calib)))} "
                     f"({measure.speed_spread(calib):.1f}x); compare figures within a round, not across")
    if steal >= STEAL_NOTE:
        notes.append(f"hypervisor steal: {steal:.0%} of this VM's CPU time during the run went to other guests; "
                     "figures are noisy, the meshns rows most (two busy processes on 2 cores)")
    doc = report.document(
        machine=measure.machine_facts(REPO),
        settings={**asdict(settings), "mode": "quick" if args.quick else "full", "only": args.only, "rate": RATE,
                  "connections": CONNS, "load_before": load_before, "load_after": load_after,
                  "cpu_steal_share": round(steal, 4), "calibration_ms": calib,
                  "wall_s_before_report": round(time.monotonic() - t0, 1)},
        rounds=bench.rounds, med=med, rat=rat, rss_peak_mb=bench.rss_peak_mb, verdicts=verdicts, notes=notes,
        scale=bench.scale, per_round=per_round)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    report.write_chart(out / "bench.png", med, bench.rss_peak_mb, bench.scale)
    text = (report.table(med, rat, bench.rss_peak_mb) + "\n\n" + report.scale_table(bench.scale) + "\n\n"
            + report.bar_text(verdicts) + "\n")
    text += "".join(f"note: {n}\n" for n in notes)
    (out / "bench.txt").write_text(text)
    return text


def _main() -> None:
    # Print progress as it happens even when stdout is a pipe (CI logs).
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    sys.exit(main())


if __name__ == "__main__":
    _main()

