"""Services and applied Istio config: meshns service ..., apply, get, delete -f."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import click

from meshns.cli.output import emit, table
from meshns.errors import NotFoundError, RegistryError, UserError
from meshns.model import PodState
from meshns.netns.crashpoints import crash_point
from meshns.registry import ConfigKey, ConfigRow

if TYPE_CHECKING:
    from meshns.istio.parse import ConfigDoc
    from meshns.mesh import Mesh

# YAML, the Istio parser, the compiler and publish are imported inside the functions that use
# them: every meshns invocation imports this module (tests/unit/test_cli_imports.py).

KINDS = {
    "virtualservice": "VirtualService", "virtualservices": "VirtualService", "vs": "VirtualService",
    "destinationrule": "DestinationRule", "destinationrules": "DestinationRule", "dr": "DestinationRule",
    "peerauthentication": "PeerAuthentication", "peerauthentications": "PeerAuthentication",
    "pa": "PeerAuthentication",
    "authorizationpolicy": "AuthorizationPolicy", "authorizationpolicies": "AuthorizationPolicy",
    "ap": "AuthorizationPolicy",
}


def read_source(filename: str) -> str:
    try:
        with click.open_file(filename, "r", encoding="utf-8") as f:
            text: str = f.read()
    except OSError as exc:
        raise UserError(f"cannot read {filename}: {exc.strerror or exc}") from None
    return text


def apply_file(mesh: Mesh, filename: str) -> tuple[list[ConfigDoc], list[str]]:
    """Parse everything first; store all documents in one transaction, or none."""
    from meshns.istio.parse import parse_documents

    result = parse_documents(read_source(filename), source=filename)
    if not result.docs:
        raise UserError(f"{filename}: no documents")
    rows = [ConfigRow(d.kind, d.namespace, d.name, json.dumps(d.raw)) for d in result.docs]
    keys = [(r.kind, r.namespace, r.name) for r in rows]
    before = mesh.registry.get_configs(keys)
    mesh.registry.put_configs(rows)
    crash_point("apply:stored")
    known = {s.name for s in mesh.registry.list_services()}
    warnings = [*result.warnings, *missing_service_warnings(result.docs, known)]
    warnings.extend(_publish_or_restore(mesh, before, keys))
    return result.docs, warnings


def _publish_or_restore(mesh: Mesh, before: list[ConfigRow], keys: list[ConfigKey]) -> list[str]:
    """Publish a config change; if the pods cannot be given it (a full state directory), put the
    documents back as they were so the command changed nothing. publish stages every snapshot
    before renaming any, so a failed one left every pod with what it had."""
    from meshns.netns.publish import publish

    try:
        return publish(mesh)
    except RegistryError as exc:
        had = {(r.kind, r.namespace, r.name) for r in before}
        try:
            mesh.registry.restore_configs(before, [k for k in keys if k not in had])
        except RegistryError as undo_exc:
            raise type(exc)(f"{exc}; and restoring the previous documents failed: {undo_exc} "
                            "(the registry has the new ones: 'meshns gc' gives them to the pods)") from exc
        raise type(exc)(f"{exc}; nothing was changed") from exc


def missing_service_warnings(docs: list[ConfigDoc], known: set[str]) -> list[str]:
    """VirtualServices and DestinationRules naming a service nobody created; security kinds have no hosts."""
    warnings = []
    for d in docs:
        if d.kind not in ("VirtualService", "DestinationRule"):
            continue
        spec = d.raw.get("spec") or {}
        for h in spec.get("hosts") or [spec.get("host")]:
            if h and str(h).split(".", 1)[0] not in known:
                warnings.append(f"{d.kind} {d.name}: service {str(h).split('.', 1)[0]!r} does not exist (yet)")
    return warnings


def delete_file(mesh: Mesh, filename: str) -> list[tuple[str, str, bool]]:
    """Like kubectl delete -f: only kind, namespace and name of each document matter."""
    keys = document_keys(read_source(filename), filename)
    before = mesh.registry.get_configs(keys)
    found = mesh.registry.remove_configs(keys)  # all in one transaction
    crash_point("delete-f:removed")
    _publish_or_restore(mesh, before, [])
    return [(kind, name, gone) for (kind, _, name), gone in zip(keys, found, strict=True)]


def document_keys(text: str, source: str) -> list[tuple[str, str, str]]:
    import yaml

    try:
        raw_docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise UserError(f"{source}: not valid YAML: {exc}") from None
    keys = []
    for i, doc in enumerate(raw_docs, 1):
        meta = doc.get("metadata") if isinstance(doc, dict) else None
        if not isinstance(meta, dict) or not isinstance(doc.get("kind"), str) or not meta.get("name"):
            raise UserError(f"{source} doc {i}: needs kind and metadata.name")
        keys.append((doc["kind"], str(meta.get("namespace") or "default"), str(meta["name"])))
    return keys


def get_docs(mesh: Mesh, kind: str | None, name: str | None) -> list[ConfigDoc]:
    from meshns.compiler import stored_docs

    want = None
    if kind is not None:
        want = KINDS.get(kind.lower())
        if want is None:
            raise UserError(f"unknown kind {kind!r}: use virtualservice (vs), destinationrule (dr), "
                            "peerauthentication (pa) or authorizationpolicy (ap)")
    docs = [d for d in stored_docs(mesh.registry.list_configs())
            if (want is None or d.kind == want) and (name is None or d.name == name)]
    if name is not None and not docs:
        raise NotFoundError(f"{want or 'config'} {name!r} not found")
    return docs


def render_docs(docs: list[ConfigDoc], fmt: str) -> str:
    from meshns.istio.render import to_json, to_yaml

    return to_json(docs) if fmt == "json" else to_yaml(docs)


def service_rows(mesh: Mesh) -> list[dict[str, Any]]:
    # Other hosts' pods (multi-host) are listed as <pod>.<host>.
    pods = mesh.registry.list_pods() + [r.as_record() for r in mesh.registry.list_remote_pods()]
    rows = []
    for s in mesh.registry.list_services():
        members = [p for p in pods if any(d.service == s.name for d in p.spec.services)]
        rows.append({
            "name": s.name, "vip": str(s.vip),
            "ports": [{"port": p, "target_port": t} for p, t in s.ports],
            "endpoints": [{"pod": p.name, "ip": str(p.ip), "ready": p.state == PodState.READY,
                           "labels": dict(p.spec.labels)} for p in members],
        })
    return rows


def service_detail(mesh: Mesh, name: str) -> dict[str, Any]:
    from meshns.compiler import compile_services, stored_docs

    services = [s for s in mesh.registry.list_services() if s.name == name]
    if not services:
        raise NotFoundError(f"service {name!r} does not exist")
    pods = mesh.registry.list_pods() + [r.as_record() for r in mesh.registry.list_remote_pods()]
    compiled, warnings = compile_services(services, pods, stored_docs(mesh.registry.list_configs()))
    data: dict[str, Any] = asdict(compiled[0])
    data["warnings"] = warnings
    return data


def render_service_detail(d: dict[str, Any]) -> str:
    ports = ", ".join(f"{p['port']}->{p['target_port']}" for p in d["ports"])
    lines = [f"service:    {d['name']}", f"vip:        {d['vip']} ports {ports}", f"balancing:  {d['lb']}",
             "endpoints:"]
    lines += [f"  {e['pod']:<20} {e['ip']:<15} {dict(e['labels'])}" for e in d["endpoints"]] or ["  (none)"]
    lines.append(f"subsets:    {', '.join(s['name'] for s in d['subsets']) or '(none)'}")
    lines.append("routes:")
    for r in d["routes"]:
        dests = ", ".join(f"{x['subset'] or 'all'}:{x['weight']}" for x in r["destinations"])
        retry = r["retries"]
        lines.append(f"  {r['name']}: {len(r['matches'])} match(es) -> {dests}; retries {retry['attempts']} on "
                     f"{','.join(retry['retry_on'])}; timeout {r['timeout_s'] or 'none'}")
    pool, od = d["pool"], d["outlier"]
    lines.append(f"limits:     connections {pool['max_connections']}, pending {pool['max_pending_requests']}, "
                 f"requests {pool['max_requests']}, connect timeout {pool['connect_timeout_s']}s")
    lines.append(f"outliers:   {'on' if od['enabled'] else 'off'}, eject after {od['consecutive_5xx']} errors "
                 f"for {od['base_ejection_s']}s, at most {od['max_ejection_percent']}%")
    lines += [f"warning:    {w}" for w in d.get("warnings", [])]
    return "\n".join(lines)


Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def register(cli: click.Group, mesh_of: Callable[..., Mesh], output_opt: Decorator) -> None:
    @cli.group()
    def service() -> None:
        """Services: stable virtual IPs in front of pods (create POD --service NAME:PORT)."""

    @service.command(name="list")
    @output_opt
    @click.pass_context
    def service_list(ctx: click.Context, fmt: str) -> None:
        """List services."""
        rows = service_rows(mesh_of(ctx))
        emit(rows, fmt, table(["NAME", "VIP", "PORTS", "ENDPOINTS"], [
            [r["name"], r["vip"], ",".join(str(p["port"]) for p in r["ports"]),
             ",".join(e["pod"] for e in r["endpoints"]) or "-"] for r in rows]))

    @service.command(name="show")
    @click.argument("name")
    @output_opt
    @click.pass_context
    def service_show(ctx: click.Context, name: str, fmt: str) -> None:
        """Show a service as its sidecars see it: endpoints, routes, policies."""
        d = service_detail(mesh_of(ctx), name)
        emit(d, fmt, render_service_detail(d))

    @service.command(name="delete")
    @click.argument("name")
    @click.pass_context
    def service_delete(ctx: click.Context, name: str) -> None:
        """Delete a service that no pod serves any more (its VIP is freed)."""
        from meshns.netns.publish import publish

        mesh = mesh_of(ctx)
        rows = [r for r in service_rows(mesh) if r["name"] == name]
        if not rows:
            raise NotFoundError(f"service {name!r} does not exist")
        if rows[0]["endpoints"]:
            raise UserError(f"service {name!r} still has pods: {', '.join(e['pod'] for e in rows[0]['endpoints'])}")
        mesh.registry.remove_service(name)
        publish(mesh)
        click.echo(f"service {name} deleted")

    @cli.command()
    @click.option("-f", "--filename", required=True, help="YAML file with Istio documents ('-' for stdin).")
    @click.pass_context
    def apply(ctx: click.Context, filename: str) -> None:
        """Apply Istio VirtualService / DestinationRule / PeerAuthentication / AuthorizationPolicy documents.

        Running sidecars pick them up live.
        """
        docs, warnings = apply_file(mesh_of(ctx, record=True), filename)
        for w in warnings:
            click.echo(f"warning: {w}", err=True)
        for d in docs:
            click.echo(f"{d.kind.lower()}/{d.name} configured")

    @cli.command()
    @click.argument("kind", required=False)
    @click.argument("name", required=False)
    @click.option("-o", "--output", "fmt", type=click.Choice(["yaml", "json"]), default="yaml", show_default=True)
    @click.pass_context
    def get(ctx: click.Context, kind: str | None, name: str | None, fmt: str) -> None:
        """Print applied config (all, or KIND [NAME]), ready to apply again."""
        click.echo(render_docs(get_docs(mesh_of(ctx), kind, name), fmt), nl=False)
