"""The per-pod supervisor: starts the sidecar, validates interception, then the app; keeps the
sidecar alive; stops the app before the sidecar.

Theory of operation. ``meshns create`` installs the rules, then starts this process detached
(its own session, output to the pod log). Phases, written to state.json for ``create`` and
``status`` to read:

    starting -> validating -> running -> stopping -> stopped
         \\-----------\\-> failed (the app was never started)

``create`` starts it before the rules, with a gate pipe (--gate-fd): the sidecar process is
launched at once (its interpreter and imports overlap the rest of create) and the certificate
issued, but the sidecar gets its config, and so binds its listeners, only after create wrote
"go" (rules applied and read back); if create goes away instead, the supervisor gives up.

Fail closed: the rules are in place before the sidecar serves, and the app starts only after
both validation probes came back through the sidecar. If the sidecar dies later, the rules
still redirect the app's traffic to the sidecar's (closed) ports, so connections are refused
rather than sent around the mesh; the supervisor restarts the sidecar with a short backoff
(100 ms doubling to 1 s, reset after 10 s of uptime), so new connections work again within
about a second. On SIGTERM the app is stopped first, then the sidecar (which drains).

Children are entered into the pod's namespace in the forked child before exec
(preexec_fn), so this process itself never leaves the host namespace. The sidecar runs as the
proxy user (uid/gid 1337, no supplementary groups): the rules exempt exactly that user.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import TYPE_CHECKING

from meshns import prctl
from meshns.errors import MeshnsError
from meshns.netns.certinfo import write_cert_info
from meshns.trace import mark

# proxyuser, sandbox (ctypes, the config model) and validate are imported once the sidecar
# process is started (run): a pod being created waits for that process, not for these.

if TYPE_CHECKING:
    from meshns.mtls.keeper import IdentityKeeper
    from meshns.mtls.tls import WorkloadTls

SUPERVISOR_MODULE = "meshns.netns.supervisor"
BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 1.0
STABLE_AFTER_S = 10.0
APP_GRACE_S = 5.0
# The sidecar finishes in-flight requests for up to its drain timeout after SIGTERM; it gets
# this much longer to exit before SIGKILL (closing listeners, flushing logs, interpreter exit).
DEFAULT_DRAIN_TIMEOUT_S = 5.0
SIDECAR_EXIT_MARGIN_S = 2.0
# How often the certificate is looked at (renewal is due at half its lifetime; root rotations
# are noticed through the CA's generation, so `meshns ca rotate` waits up to this long per phase
# for every supervisor). Also the longest nap of the loop: each wake-up of an idle supervisor
# costs CPU, times the number of pods on the host.
IDENTITY_CHECK_S = 0.5
# What meshns create writes on the gate pipe (--gate-fd) once the pod's rules are applied and
# checked: the supervisor starts early, but the sidecar gets its config (and binds) only then.
GATE_GO = b"go"


def module_argv(module: str, *args: str) -> list[str]:
    """``python -P -m module args``: every meshns process we start (supervisor, sidecar, host
    agent) is started this way. ``python -m`` puts the current directory first on sys.path:
    started from a directory that has a ``meshns`` folder (a checkout of this repository, or
    anything a user left there), these processes, root at first, would run that code instead of
    the installed one. -P (Python 3.11) leaves the current directory out."""
    return [sys.executable, "-P", "-m", module, *args]


def sidecar_stop_s(drain_timeout_s: float) -> float:
    return drain_timeout_s + SIDECAR_EXIT_MARGIN_S


def supervisor_stop_s(drain_timeout_s: float) -> float:
    """How long a supervisor may take to stop gracefully: app grace, then the sidecar's drain."""
    return APP_GRACE_S + sidecar_stop_s(drain_timeout_s) + 1.0


@dataclass
class State:
    phase: str = "starting"
    supervisor_pid: int = field(default_factory=os.getpid)
    sidecar_pid: int | None = None
    sidecar_restarts: int = 0
    sidecar_started_at: float | None = None
    app_pid: int | None = None
    app_state: str = "not started"
    app_exit_code: int | None = None
    error: str | None = None


class Supervisor:
    def __init__(self, pod_dir: Path, gate_fd: int | None = None) -> None:
        self.pod_dir = pod_dir
        self.gate_fd = gate_fd
        self.sidecar_config: dict[str, object] = {}
        self.plan = json.loads((pod_dir / "supervisor.json").read_text())
        self.netns: str = self.plan["netns"]
        self.state = State()
        self.stopping = False
        self.sidecar: subprocess.Popen[bytes] | None = None
        self.app: subprocess.Popen[bytes] | None = None
        self.drain_timeout_s = DEFAULT_DRAIN_TIMEOUT_S
        # mTLS: the supervisor (root) issues and renews this pod's certificate and hands it to
        # the sidecar (uid 1337) over a pipe; the CA key never leaves the state directory.
        # Made by load_identity: run() starts the sidecar process before it, so the CA code's
        # import (cryptography, about 0.1 s) overlaps the sidecar's own start-up.
        self.identity_plan: dict[str, object] | None = self.plan.get("identity") or None
        self.keeper: IdentityKeeper | None = None
        self.identity_w: int | None = None  # our end of the current sidecar's identity pipe
        self.ready_r: int | None = None  # our end of the current sidecar's ready pipe
        self.identity_out = b""  # bytes not yet taken by the pipe
        self.next_identity_check = 0.0

    def load_identity(self) -> None:
        """The pod's certificate keeper, for pods with an identity."""
        ident = self.identity_plan
        if not ident or self.keeper is not None:
            return
        # The CA code (cryptography) loads only for pods with an identity, and only here:
        # meshns create and status import this module for its constants.
        from meshns.mtls.identity import SpiffeId
        from meshns.mtls.keeper import IdentityKeeper

        ttl = ident.get("ttl_s")
        self.keeper = IdentityKeeper(Path(str(ident["ca_dir"])), SpiffeId.parse(str(ident["spiffe"])),
                                     None if ttl is None else float(str(ttl)))

    # -- state file ------------------------------------------------------------------------
    def save(self) -> None:
        tmp = self.pod_dir / "state.json.tmp"
        data = dict(self.state.__dict__, updated_at=time.time())
        tmp.write_text(json.dumps(data, sort_keys=True))
        os.replace(tmp, self.pod_dir / "state.json")

    def log(self, text: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        print(f"{stamp} supervisor pod={self.plan['pod']} {text}", file=sys.stderr, flush=True)

    # -- children --------------------------------------------------------------------------
    def _sidecar_preexec(self) -> None:
        from meshns.netns import proxyuser  # loaded before the fork (spawn_sidecar)

        proxyuser.become_proxy(self.netns)

    @staticmethod
    def _early_preexec() -> None:
        # Started early (create): root in the host namespace until the sidecar gets its config
        # and calls become_proxy itself. If this supervisor dies first, so does that process;
        # the uid change in become_proxy clears this, and become_proxy sets SIGTERM after it.
        prctl.parent_death_signal(signal.SIGKILL)

    def start_sidecar(self) -> None:
        self.spawn_sidecar()
        self.configure_sidecar()

    def spawn_sidecar(self, early: bool = False) -> None:
        """Start the sidecar process; it imports its code, then waits for its config on stdin
        and binds nothing before it has it (configure_sidecar).

        ``early``: for a pod being created, the namespace may not exist yet, so the process
        starts as root in the host namespace and enters the namespace and becomes the proxy
        user itself once its config arrives (dataplane/__main__.py, netns/proxyuser.py): its
        interpreter start-up and imports overlap the rest of create."""
        # The proxy user need not reach the state directory: it gets its config on stdin and an
        # open descriptor of the pod directory, from which it reads snapshot.json (openat).
        config = json.loads((self.pod_dir / "sidecar.json").read_text())
        self.drain_timeout_s = float(config.get("drain_timeout_s", DEFAULT_DRAIN_TIMEOUT_S))
        dir_fd = os.open(self.pod_dir, os.O_RDONLY | os.O_DIRECTORY)
        fds = [dir_fd]
        if self.identity_plan:  # the keeper may not be loaded yet (run)
            read_end, write_end = os.pipe()
            fds.append(read_end)
            config["identity_fd"] = read_end
            self._set_identity_pipe(write_end)
        ready_r, ready_w = os.pipe()
        fds.append(ready_w)
        config["ready_fd"] = ready_w
        self._set_ready_pipe(ready_r)
        if not early:
            from meshns.netns import proxyuser  # noqa: F401 - for _sidecar_preexec, not after the fork
        try:
            config["snapshot_dir_fd"] = dir_fd
            enter = ["--enter-netns", self.netns] if early else []
            self.sidecar = subprocess.Popen(
                module_argv("meshns.dataplane", "--config", "-", *enter),
                stdin=subprocess.PIPE, pass_fds=tuple(fds), close_fds=True,
                # This process has one thread, so preexec_fn is safe here.
                preexec_fn=self._early_preexec if early else self._sidecar_preexec,  # noqa: PLW1509
            )
        finally:
            for fd in fds:
                os.close(fd)
        self.sidecar_config = config
        self.state.sidecar_pid = self.sidecar.pid
        self.state.sidecar_started_at = time.time()
        self.log(f"sidecar started pid={self.sidecar.pid}")
        self.save()

    def configure_sidecar(self) -> None:
        """Hand the sidecar its certificate and its config: from here on it binds and serves."""
        assert self.sidecar is not None and self.sidecar.stdin is not None
        if self.keeper is not None:
            self._send_identity(self.keeper.current())
        with self.sidecar.stdin:
            self.sidecar.stdin.write(json.dumps(self.sidecar_config).encode())

    def await_gate(self) -> bool:
        """Wait until ``meshns create`` says the interception rules are in place (it writes
        "go" on the gate pipe). False if it went away first (EOF: killed, or rolling back) or
        this supervisor is being stopped."""
        assert self.gate_fd is not None
        try:
            while not self.stopping:
                ready, _, _ = select.select([self.gate_fd], [], [], 0.05)
                if ready:
                    return os.read(self.gate_fd, 16).startswith(GATE_GO)
            return False
        finally:
            os.close(self.gate_fd)
            self.gate_fd = None

    def _set_ready_pipe(self, fd: int) -> None:
        if self.ready_r is not None:
            os.close(self.ready_r)
        self.ready_r = fd

    def await_sidecar_ready(self, timeout_s: float) -> None:
        """Wait until the sidecar says it accepts (a line on its ready pipe), it exits (EOF), we
        are stopped, or timeout_s passes. Whichever it was, validation follows and decides: this
        only keeps the probes (a fork into the pod each) from polling a sidecar that is still
        importing its code, taking the CPU it needs to get there."""
        if self.ready_r is None:
            return
        deadline = time.monotonic() + timeout_s
        try:
            while not self.stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                ready, _, _ = select.select([self.ready_r], [], [], min(left, 0.05))
                if ready:
                    return
        finally:
            os.close(self.ready_r)
            self.ready_r = None

    # -- identity ---------------------------------------------------------------------------
    def _set_identity_pipe(self, fd: int) -> None:
        if self.identity_w is not None:
            os.close(self.identity_w)
        os.set_blocking(fd, False)  # a stuck sidecar must never block the supervisor
        self.identity_w = fd
        self.identity_out = b""

    def _send_identity(self, w: WorkloadTls) -> None:
        from meshns.mtls.tls import encode_identity

        self.identity_out += encode_identity(w)
        self._flush_identity()
        write_cert_info(self.pod_dir, w, self.keeper.generation if self.keeper else 0)

    def _flush_identity(self) -> None:
        while self.identity_out and self.identity_w is not None:
            try:
                n = os.write(self.identity_w, self.identity_out)
            except BlockingIOError:
                return  # the rest goes out on a later tick
            except OSError as exc:  # the sidecar is gone; its successor gets a new pipe
                self.log(f"identity pipe: {exc}")
                self.identity_out = b""
                return
            self.identity_out = self.identity_out[n:]

    def check_identity(self) -> None:
        """Renew at half the lifetime, and follow root rotations; cheap when nothing is due."""
        if self.keeper is None or time.monotonic() < self.next_identity_check:
            return
        self.next_identity_check = time.monotonic() + IDENTITY_CHECK_S
        self._flush_identity()
        try:
            fresh = self.keeper.tick()
        except (MeshnsError, OSError, ValueError) as exc:
            self.log(f"certificate renewal failed (will retry): {exc}")
            return
        if fresh is not None:
            self.log(f"certificate {fresh.serial} issued for {fresh.identity}, valid until {fresh.not_after:.0f}")
            self._send_identity(fresh)

    def start_app(self) -> None:
        argv: list[str] = self.plan["app"]
        if not argv:
            self.state.app_state = "none"
            return
        from meshns.netns import sandbox

        hide = sandbox.hidden_dirs(self.pod_dir.parent.parent)
        with open(self.pod_dir / "app.log", "ab") as out:
            # The app's view of the pod: its network namespace, /etc/netns/<netns>/* over /etc,
            # the mesh's state hidden, and no capability to undo any of it (netns/sandbox.py).
            self.app = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, close_fds=True,
                preexec_fn=lambda: sandbox.enter(self.netns, hide),  # noqa: PLW1509 - one thread
            )
        self.state.app_pid = self.app.pid
        self.state.app_state = "running"
        self.log(f"app started pid={self.app.pid}: {' '.join(argv)}")

    # -- main loop -------------------------------------------------------------------------
    def run(self) -> int:
        # This process holds the pod's key between issue and hand-over; root processes whose
        # capabilities are not a subset of ours already cannot read our memory, and a
        # non-dumpable process's /proc entries are root's alone.
        prctl.not_dumpable()
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        self.save()
        # The sidecar process starts first: its interpreter and imports take longer than anything
        # below, and it binds nothing until configure_sidecar, which comes after the gate.
        mark("sup:run")
        self.spawn_sidecar(early=self.gate_fd is not None)
        mark("sup:sidecar-spawned")
        _preload_after_spawn()
        if self.identity_plan:
            try:
                self.load_identity()
                assert self.keeper is not None
                self.keeper.current()
            except (MeshnsError, OSError, ValueError) as exc:
                return self.fail(f"cannot issue the workload certificate: {exc}")
        mark("sup:cert-ready")
        if self.gate_fd is not None and not self.await_gate():
            if self.stopping:
                return self.shutdown()
            return self.fail("meshns create went away before the interception rules were confirmed")
        mark("sup:gate")
        self.configure_sidecar()
        mark("sup:configured")
        self.state.phase = "validating"
        self.save()
        ready_timeout_s = float(self.plan["ready_timeout_s"])
        started = time.monotonic()
        self.await_sidecar_ready(ready_timeout_s)
        mark("sup:sidecar-ready")
        from meshns.netns.validate import validate

        try:
            validate(self.netns, IPv4Address(self.plan["pod_ip"]), IPv4Address(self.plan["gateway"]),
                     max(ready_timeout_s - (time.monotonic() - started), 1.0))
        except MeshnsError as exc:
            return self.fail(str(exc))
        mark("sup:validated")
        if self.stopping:
            return self.shutdown()
        try:
            self.start_app()
        except OSError as exc:
            return self.fail(f"cannot start the app: {exc}")
        self.state.phase = "running"
        self.save()
        self.log("running")
        mark("sup:running")
        return self.loop()

    def fail(self, reason: str) -> int:
        self.log(f"failed: {reason}")
        self.state.error = reason
        self._stop_sidecar()
        self.state.phase = "failed"
        self.save()
        return 1

    def loop(self) -> int:
        backoff = BACKOFF_MIN_S
        restart_at: float | None = None
        wake_r, wake_w = self._wake_on_signals()
        try:
            while not self.stopping:
                self.check_identity()
                restart_at, backoff = self._tend_children(restart_at, backoff)
                if not self.stopping:
                    check_at = self.next_identity_check if self.keeper is not None else math.inf
                    self._nap(wake_r, nap_s(time.monotonic(), check_at, restart_at))
        finally:
            signal.set_wakeup_fd(-1)
            os.close(wake_r)
            os.close(wake_w)
        return self.shutdown()

    @staticmethod
    def _wake_on_signals() -> tuple[int, int]:
        """A pipe the signal machinery writes a byte to on every signal we handle: SIGCHLD (the app
        or the sidecar exited) and SIGTERM/SIGINT (stop) end a nap at once, so the loop sleeps
        until the next identity check instead of polling its children 20 times a second.

        Measured: each wake-up of an idle Python loop costs about 0.1 ms of CPU on the 2-core VM,
        so polling at 20 Hz kept every idle supervisor at ~1.75 ms/s (100 pods: 17% of a core,
        taken from the next `meshns create`). An earlier try of this (a14518a, reverted in
        3c3a841) saw no gain because re-reading the CA state 4 times a second dominated then;
        CertAuthority.refresh has since become a stat when nothing changed. The wakeup fd is set
        before the loop first polls the children, so an exit in between still wakes it."""
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)  # a handler, so the fd is written
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        return r, w

    @staticmethod
    def _nap(wake_r: int, seconds: float) -> None:
        select.select([wake_r], [], [], seconds)
        with contextlib.suppress(BlockingIOError):
            while os.read(wake_r, 512):
                pass

    def _tend_children(self, restart_at: float | None, backoff: float) -> tuple[float | None, float]:
        """Note an exited app; restart an exited sidecar after its backoff. Returns the pending
        restart time and the next backoff."""
        if self.app is not None and self.state.app_state == "running":
            code = self.app.poll()
            if code is not None:
                self.state.app_state = "exited"
                self.state.app_exit_code = code
                self.log(f"app exited with {code}")
                self.save()
        if self.sidecar is not None and self.sidecar.poll() is not None and restart_at is None:
            ran_s = time.time() - (self.state.sidecar_started_at or 0.0)
            backoff = BACKOFF_MIN_S if ran_s > STABLE_AFTER_S else backoff
            self.log(f"sidecar pid={self.sidecar.pid} exited with {self.sidecar.returncode}; "
                     f"restarting in {backoff:.1f} s")
            restart_at = time.monotonic() + backoff
            backoff = min(backoff * 2, BACKOFF_MAX_S)
        if restart_at is not None and time.monotonic() >= restart_at and not self.stopping:
            restart_at = None
            self.state.sidecar_restarts += 1
            self.start_sidecar()
        return restart_at, backoff

    def _on_stop(self, signum: int, _frame: object) -> None:
        self.stopping = True

    def shutdown(self) -> int:
        self.state.phase = "stopping"
        self.save()
        self.log("stopping: app first, then the sidecar")
        if self.app is not None and self.app.poll() is None:
            # The sidecar keeps serving meanwhile, so the app's in-flight requests can complete.
            self.log(f"stopping app pid={self.app.pid}: SIGTERM to its group, up to {APP_GRACE_S:g} s")
            _stop(self.app, APP_GRACE_S, group=True)
            self.state.app_exit_code = self.app.returncode
            self.log(f"app exited with {self.app.returncode}")
        if self.state.app_state == "running":
            self.state.app_state = "stopped"
        self._stop_sidecar()
        self.state.phase = "stopped"
        self.save()
        self.log("stopped")
        return 0

    def _stop_sidecar(self) -> None:
        if self.sidecar is not None and self.sidecar.poll() is None:
            drain_s = self.drain_timeout_s
            self.log(f"stopping sidecar pid={self.sidecar.pid}: drain up to {drain_s:g} s")
            _stop(self.sidecar, sidecar_stop_s(drain_s), group=False)
            self.log(f"sidecar exited with {self.sidecar.returncode}")


def _stop(proc: subprocess.Popen[bytes], grace_s: float, group: bool) -> None:
    def send(sig: signal.Signals) -> None:
        try:
            if group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
        except ProcessLookupError:
            pass

    send(signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        proc.wait()


def _preload_after_spawn() -> None:
    """What run needs later (entering the pod, starting the app, the probes), loaded while the
    sidecar process starts rather than before it."""
    import meshns.netns.proxyuser
    import meshns.netns.sandbox
    import meshns.netns.validate  # noqa: F401


def nap_s(now: float, next_identity_check: float, restart_at: float | None) -> float:
    """How long the supervisor's loop may sleep (pure): until the identity check or the sidecar's
    restart is due, whichever comes first; children's exits and stop signals wake it earlier.
    Never negative, and never longer than IDENTITY_CHECK_S (a clock step must not stall it)."""
    due = next_identity_check if restart_at is None else min(next_identity_check, restart_at)
    return min(max(due - now, 0.0), IDENTITY_CHECK_S)


def command(state_dir: Path, pod: str, gate_fd: int | None = None) -> list[str]:
    gate = [] if gate_fd is None else ["--gate-fd", str(gate_fd)]
    return module_argv(SUPERVISOR_MODULE, "--state-dir", str(state_dir), "--pod", pod, *gate)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=SUPERVISOR_MODULE)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--pod", required=True)
    parser.add_argument("--gate-fd", type=int, default=None,
                        help="configure the sidecar only after reading 'go' here (meshns create)")
    args = parser.parse_args(argv)
    return Supervisor(Path(args.state_dir) / "pods" / args.pod, args.gate_fd).run()


if __name__ == "__main__":
    sys.exit(main())
