"""Operator commands: status, top, logs, metrics, explain. Parse, call, print."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import click

from meshns.cli import ops_render
from meshns.cli.output import emit
from meshns.errors import NotFoundError, PermissionError_, SystemFailure, UserError
from meshns.mesh import Mesh, require_root
from meshns.model import PodRecord
from meshns.netns import podlog, status
from meshns.netns.child import run_in_netns

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]
CLEAR = "\x1b[H\x1b[2J"


def _record(mesh: Mesh, name: str) -> PodRecord:
    record = mesh.registry.get_pod(name)
    if record is None:
        raise NotFoundError(f"pod {name!r} does not exist")
    return record


def register(cli: click.Group, mesh_of: Callable[..., Mesh], output_opt: Decorator) -> None:
    @cli.command(name="status")
    @click.argument("name", required=False)
    @output_opt
    @click.option("--window", default=1.0, show_default=True, type=click.FloatRange(min=0.0),
                  help="Seconds between the two metric scrapes rates are computed from (0: no rates).")
    @click.pass_context
    def status_(ctx: click.Context, name: str | None, fmt: str, window: float) -> None:
        """Pods with their services, sidecar, app, request rate and error share (one POD: in detail)."""
        require_root("meshns status")
        mesh = mesh_of(ctx)
        records = [_record(mesh, name)] if name is not None else mesh.registry.list_pods()
        details = status.gather(mesh, records, window)
        if name is not None:
            emit(details[0], fmt, ops_render.status_detail(details[0]))
        else:
            emit(details, fmt, ops_render.status_table(details))

    @cli.command()
    @click.option("--interval", default=2.0, show_default=True, type=click.FloatRange(min=0.1),
                  help="Seconds between scrapes (each sample covers one interval).")
    @click.option("-n", "iterations", type=click.IntRange(min=1), default=None,
                  help="Stop after this many samples (default: until interrupted).")
    @output_opt
    @click.pass_context
    def top(ctx: click.Context, interval: float, iterations: int | None, fmt: str) -> None:
        """Busiest source -> destination pairs across all pods, refreshed every interval."""
        require_root("meshns top")
        mesh = mesh_of(ctx)
        redraw = fmt == "table" and sys.stdout.isatty()
        before, t_before = status.scrape_all(mesh.registry.list_pods()), time.monotonic()
        done = 0
        while iterations is None or done < iterations:
            time.sleep(max(0.0, t_before + interval - time.monotonic()))
            after, t_after = status.scrape_all(mesh.registry.list_pods()), time.monotonic()
            sample = status.top_sample(before, after, t_after - t_before)
            if fmt == "json":
                click.echo(json.dumps(sample, sort_keys=True))  # one line per sample: JSON Lines
            else:
                click.echo((CLEAR if redraw else "") + ops_render.top_table(sample))
            before, t_before = after, t_after
            done += 1

    @cli.command()
    @click.argument("name")
    @click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until interrupted.")
    @click.option("--access", is_flag=True, help="Only the sidecar's access-log lines (one JSON object each).")
    @click.option("--app", is_flag=True, help="The app's output instead of the pod log.")
    @click.pass_context
    def logs(ctx: click.Context, name: str, follow: bool, access: bool, app: bool) -> None:
        """Print pod NAME's log: supervisor and sidecar (with --app: the app's output)."""
        if access and app:
            raise UserError("--access and --app select different logs: give one")
        mesh = mesh_of(ctx)
        _record(mesh, name)
        path = mesh.cfg.pod_dir(name) / ("app.log" if app else "pod.log")
        try:
            for line in podlog.read_lines(path, follow):
                if access and podlog.access_record(line) is None:
                    continue
                # An access line is printed from its "{": exactly the JSON object, whatever prefix.
                text = line[line.find("{"):] if access else line
                click.echo(text, nl=not text.endswith("\n"))
        except FileNotFoundError:
            raise NotFoundError(f"pod {name!r} has no {path.name} yet") from None
        except PermissionError:
            raise PermissionError_(f"cannot read {path}: permission denied (try sudo)") from None

    @cli.command()
    @click.argument("name")
    @click.pass_context
    def metrics(ctx: click.Context, name: str) -> None:
        """Print pod NAME's sidecar metrics, Prometheus text as the sidecar serves it."""
        require_root("meshns metrics")
        record = _record(mesh_of(ctx), name)
        code, body = run_in_netns(record.netns, status.admin_get, status.PROMETHEUS_PATH)
        if code != 200:
            raise SystemFailure(f"pod {name}: sidecar answered {code} for {status.PROMETHEUS_PATH}")
        click.echo(body.decode("utf-8", "replace"), nl=False)

    @cli.command()
    @click.argument("name")
    @click.argument("target", metavar="DST:PORT")
    @output_opt
    @click.pass_context
    def explain(ctx: click.Context, name: str, target: str, fmt: str) -> None:
        """What happens to a connection from pod NAME's app to DST:PORT (an IP or a pod or service
        name), from the live rules and the running sidecar's config."""
        from meshns.netns import explain as explain_mod

        require_root("meshns explain")
        doc = explain_mod.explain(mesh_of(ctx), name, target)
        emit(doc, fmt, ops_render.explain_text(doc))
