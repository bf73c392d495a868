"""`meshns host join|leave|list`: this host's membership of a multi-host mesh on etcd.

The commands only start, stop and read the host agent (meshns.cluster.agent); the agent is the
only etcd client on the host.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click

from meshns.cli.output import emit, table
from meshns.cluster import hostfile, keys
from meshns.errors import ConflictError, NotFoundError, SystemFailure, UserError
from meshns.mesh import Mesh, require_root
from meshns.netns.supervisor import module_argv

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]
JOIN_WAIT_S = 30.0


def _endpoints(text: str) -> tuple[str, ...]:
    out = []
    for url in (u.strip() for u in text.split(",")):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
            raise UserError(f"--etcd {url!r}: expected http://HOST:PORT[,http://HOST:PORT...]")
        out.append(url.rstrip("/"))
    return tuple(out)


def _default_host_name() -> str:
    name = socket.gethostname().split(".")[0].lower()
    return "".join(c if c.isalnum() or c == "-" else "-" for c in name).strip("-")[:40] or "host"


def spawn_agent(state_dir: Path) -> subprocess.Popen[bytes]:
    hdir = hostfile.host_dir(state_dir)
    hdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    logf = open(hdir / "agent.log", "ab")  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(module_argv("meshns.cluster.agent", "--state-dir", str(state_dir)),
                                stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True,
                                close_fds=True)
    finally:
        logf.close()


def wait_joined(state_dir: Path, proc: subprocess.Popen[bytes], wait_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + wait_s
    last: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        last = hostfile.read_status(state_dir)
        if last and last.get("pid") == proc.pid and last.get("state") in ("joined", "error"):
            return last
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    tail = (hostfile.host_dir(state_dir) / "agent.log").read_text(errors="replace").strip().splitlines()[-3:]
    reason = (last or {}).get("error") or (tail[-1] if tail else "no output")
    return {"state": "error", "error": f"the agent did not join within {wait_s:.0f} s: {reason}"}


def _stop_agent(pid: int, wait_s: float = 15.0) -> bool:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if hostfile.agent_alive({"pid": pid}) is None:
            return True
        time.sleep(0.05)
    return False


def register(cli: click.Group, mesh_of: Callable[..., Mesh], output_opt: Decorator) -> None:
    @cli.group()
    def host() -> None:
        """This host's membership of a multi-host mesh (shared state in etcd)."""

    @host.command()
    @click.option("--etcd", "etcd", required=True, help="etcd client URL(s), comma-separated.")
    @click.option("--address", required=True, help="This host's address the other hosts route its pods to.")
    @click.option("--name", "host_name", default=None, help="Host name in the mesh [default: hostname].")
    @click.option("--mesh", "mesh_name", default="default", show_default=True, help="Mesh name (etcd prefix).")
    @click.option("--cluster-cidr", default=hostfile.DEFAULT_CLUSTER_CIDR, show_default=True,
                  help="The whole mesh's pod range; hosts get blocks of it (first host decides).")
    @click.option("--block-prefix", default=hostfile.DEFAULT_BLOCK_PREFIX, show_default=True,
                  type=click.IntRange(8, 30), help="Size of each host's pod block (first host decides).")
    @click.option("--block", default=None, help="Claim exactly this block (else the first free one).")
    @click.option("--ttl", default=hostfile.DEFAULT_TTL_S, show_default=True, type=click.IntRange(2, 300),
                  help="Lease TTL in seconds: a dead host vanishes from the others within it.")
    @click.option("--wait", "wait_s", default=JOIN_WAIT_S, show_default=True, type=click.FloatRange(1, 600),
                  help="Seconds to wait for the agent to join.")
    @click.pass_context
    def join(ctx: click.Context, etcd: str, address: str, host_name: str | None, mesh_name: str,
             cluster_cidr: str, block_prefix: int, block: str | None, ttl: int, wait_s: float) -> None:
        """Join this host to a mesh on etcd: start its agent, claim a pod block, publish its pods."""
        require_root("meshns host join")
        endpoints = _endpoints(etcd)
        try:
            addr = IPv4Address(address)
            cluster = IPv4Network(cluster_cidr)
            want = IPv4Network(block) if block else None
        except ValueError as exc:
            raise UserError(f"{exc}") from exc
        if want is not None and not want.subnet_of(cluster):
            raise UserError(f"--block {want} is not inside --cluster-cidr {cluster}")
        mesh = mesh_of(ctx)
        state_dir = mesh.cfg.state_dir
        try:
            settings = hostfile.HostSettings(
                name=keys.validate_host_name(host_name or _default_host_name()),
                mesh=keys.validate_mesh_name(mesh_name),
                endpoints=endpoints, address=str(addr), ttl_s=ttl, cluster_cidr=str(cluster),
                block_prefix=block_prefix, want_block=str(want) if want else None)
            old = hostfile.load_settings(state_dir)
            running = hostfile.agent_alive(hostfile.read_status(state_dir))
            if old is not None and (old.name, old.mesh) != (settings.name, settings.mesh):
                raise ConflictError(f"this host already joined mesh {old.mesh!r} as {old.name!r}; "
                                    "`meshns host leave` first")
            if running is not None:
                if old == settings:
                    click.echo(f"already joined as {settings.name} (agent pid {running})")
                    return
                raise ConflictError(f"the agent (pid {running}) runs with other settings; `meshns host leave` first")
        finally:
            mesh.close()
        hostfile.save_settings(state_dir, settings)
        (hostfile.host_dir(state_dir) / "leave").unlink(missing_ok=True)
        proc = spawn_agent(state_dir)
        status = wait_joined(state_dir, proc, wait_s)
        if status.get("state") != "joined":
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if old is None:
                (hostfile.host_dir(state_dir) / "settings.json").unlink(missing_ok=True)
            raise SystemFailure(f"host join: {status.get('error') or 'failed'} "
                                f"(log: {hostfile.host_dir(state_dir) / 'agent.log'})")
        click.echo(f"joined mesh {settings.mesh} as {settings.name}: pod block {status.get('block')}, "
                   f"agent pid {proc.pid}")

    @host.command()
    @click.option("--force", is_flag=True, help="Forget the membership even if the agent cannot be reached.")
    @click.pass_context
    def leave(ctx: click.Context, force: bool) -> None:
        """Leave the mesh: the host vanishes from the others at once and gives its block back."""
        require_root("meshns host leave")
        mesh = mesh_of(ctx)
        try:
            state_dir = mesh.cfg.state_dir
            if hostfile.load_settings(state_dir) is None and not force:
                raise NotFoundError("this host has not joined a mesh")
            if mesh.registry.list_pods() and not force:
                raise ConflictError("pods still use this host's block: delete them first (or --force)")
        finally:
            mesh.close()
        hdir = hostfile.host_dir(state_dir)
        pid = hostfile.agent_alive(hostfile.read_status(state_dir))
        if pid is not None:
            (hdir / "leave").touch()
            if not _stop_agent(pid) and not force:
                raise SystemFailure(f"the agent (pid {pid}) did not stop; try again or --force")
        elif not force:
            # No agent: start one just to give the block back (it is the etcd client), then stop it.
            (hdir / "leave").touch()
            proc = spawn_agent(state_dir)
            status = wait_joined(state_dir, proc, JOIN_WAIT_S)
            if status.get("state") != "joined":
                if proc.poll() is None:
                    proc.kill()
                raise SystemFailure(f"host leave: {status.get('error')} (--force forgets the membership "
                                    "here; the block stays claimed in etcd)")
            _stop_agent(proc.pid)
        for f in ("settings.json", "leave", "base.json"):
            (hdir / f).unlink(missing_ok=True)
        click.echo("left the mesh")

    @host.command(name="list")
    @output_opt
    @click.pass_context
    def list_(ctx: click.Context, fmt: str) -> None:
        """The hosts of the mesh as this host's agent sees them."""
        mesh = mesh_of(ctx)
        try:
            state_dir = mesh.cfg.state_dir
        finally:
            mesh.close()
        status = hostfile.read_status(state_dir)
        if hostfile.load_settings(state_dir) is None or status is None:
            raise NotFoundError("this host has not joined a mesh (`meshns host join`)")
        alive = hostfile.agent_alive(status) is not None
        status["agent_running"] = alive
        rows = [[h["name"] + (" (this host)" if h.get("self") else ""), h.get("address") or "-",
                 h.get("pod_cidr") or "-", str(h.get("pods", 0))] for h in status.get("hosts", [])]
        conn = "connected" if status.get("connected") else f"NOT connected ({status.get('error') or '?'})"
        head = (f"mesh {status.get('mesh')}, host {status.get('host')}, agent "
                f"{'running' if alive else 'NOT running'}, etcd {conn}, revision {status.get('revision')}")
        emit(status, fmt, head + "\n" + table(["HOST", "ADDRESS", "POD BLOCK", "PODS"], rows))
