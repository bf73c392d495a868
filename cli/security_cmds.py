"""`meshns ca ...`, `meshns cert show`, `meshns identity ...`: the mesh CA and workload identities."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from meshns.cli.output import emit, table
from meshns.errors import NotFoundError, SystemFailure, UserError
from meshns.istio.reader import parse_duration_s
from meshns.model import PodSpec, PodState, account_of, identity_of
from meshns.mtls.identity import DEFAULT_TRUST_DOMAIN, IdentityError, SpiffeId
from meshns.netns.certinfo import read_cert_info

if TYPE_CHECKING:
    from meshns.mesh import Mesh

# The CA, the compiler and publish (cryptography, YAML) are imported inside the commands that
# use them: every meshns invocation imports this module (tests/unit/test_cli_imports.py).

# A new root must be trusted by every sidecar before anything is signed with it; each supervisor
# reports the CA generation its sidecar was sent. This is how long `ca rotate` waits for that.
ROTATE_WAIT_S = 30.0
# After the last report, the sidecars still have to read the pipe and rebuild their contexts.
ROTATE_SETTLE_S = 0.5
MIN_TTL_S = 2.0


class Duration(click.ParamType):  # type: ignore[type-arg]
    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        seconds = parse_duration_s(str(value))
        if seconds is None:
            self.fail(f"{value!r} is not a duration (like 24h, 30m, 90s)", param, ctx)
        if seconds < MIN_TTL_S:
            self.fail(f"{value!r} is too short (at least {MIN_TTL_S:g}s)", param, ctx)
        return seconds


DURATION = Duration()


def validate_identity_parts(pod: str, spec: PodSpec) -> None:
    """Bad namespace or service account names fail before anything is made."""
    try:
        SpiffeId.parse(f"spiffe://{DEFAULT_TRUST_DOMAIN}/ns/{spec.namespace}/sa/{account_of(pod, spec)}")
    except IdentityError as exc:
        raise UserError(f"pod {pod}: {exc}") from None


def _stamp(t: object) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(t))) if isinstance(t, (int, float)) else "-"


def _issuer(cert_pem: object) -> tuple[str, int]:
    """Who signed the leaf (a host's intermediate, or the root) and how many certificates the
    pod presents (2 with an intermediate)."""
    from cryptography import x509

    if not isinstance(cert_pem, str) or "BEGIN CERTIFICATE" not in cert_pem:
        return "", 0
    certs = x509.load_pem_x509_certificates(cert_pem.encode())
    return certs[0].issuer.rfc4514_string(), len(certs)


def register(cli: click.Group, mesh_of: Callable[[click.Context], Mesh], output: Callable[..., Any]) -> None:
    @cli.group()
    def ca() -> None:
        """The mesh CA: root of trust of every workload certificate."""

    @ca.command("init")
    @click.option("--trust-domain", default=DEFAULT_TRUST_DOMAIN, show_default=True)
    @click.option("--workload-ttl", type=DURATION, default="24h", show_default=True,
                  help="Default lifetime of workload certificates.")
    @click.pass_context
    def ca_init(ctx: click.Context, trust_domain: str, workload_ttl: float) -> None:
        """Create the CA (otherwise made on first `create` with the defaults)."""
        from meshns.mesh import require_root
        from meshns.mtls.ca import CertAuthority

        require_root("meshns ca init")
        mesh = mesh_of(ctx)
        try:
            SpiffeId.parse(f"spiffe://{trust_domain}/ns/default/sa/default")
        except IdentityError as exc:
            raise UserError(f"trust domain {trust_domain!r}: {exc}") from None
        existed = CertAuthority.exists(mesh.cfg.ca_dir)
        authority = CertAuthority.init(mesh.cfg.ca_dir, trust_domain, workload_ttl)
        click.echo(f"CA {'exists' if existed else 'created'}: trust domain {authority.trust_domain}, "
                   f"workload certificates {authority.workload_ttl_s:g} s, in {mesh.cfg.ca_dir}")

    @ca.command("show")
    @output
    @click.pass_context
    def ca_show(ctx: click.Context, fmt: str) -> None:
        """Trust domain, roots and their states."""
        from meshns.mtls.ca import CertAuthority

        mesh = mesh_of(ctx)
        if not CertAuthority.exists(mesh.cfg.ca_dir):
            raise NotFoundError("no CA yet (it is created by `meshns ca init` or the first `meshns create`)")
        authority = CertAuthority.load(mesh.cfg.ca_dir)
        rows = [{"serial": serial, "state": state, "retire_at": _stamp(retire)}
                for serial, state, retire in authority.roots]
        inter = authority.intermediate
        inter_doc = None if inter is None else {
            "serial": inter.serial, "host": inter.host, "issuer": inter.issuer,
            "not_before": _stamp(inter.not_before), "not_after": _stamp(inter.not_after)}
        doc = {"mode": authority.mode, "trust_domain": authority.trust_domain,
               "workload_ttl_s": authority.workload_ttl_s, "generation": authority.generation, "roots": rows,
               "intermediate": inter_doc}
        signs = ("the active root" if inter_doc is None else
                 f"intermediate {inter_doc['serial']} (host {inter_doc['host'] or '?'}, "
                 f"root {inter_doc['issuer']}), valid until {inter_doc['not_after']}")
        emit(doc, fmt, f"{authority.mode} mode, trust domain {authority.trust_domain}, workload certificates "
             f"{authority.workload_ttl_s:g} s, signed by {signs}\n"
             + table(["SERIAL", "STATE", "RETIRE AT"], [[r["serial"], r["state"], r["retire_at"]] for r in rows]))

    @ca.command("intermediate")
    @click.option("--host", required=True, help="The host the intermediate is for (a lower-case DNS name).")
    @click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
                  help="New or empty directory to write the intermediate, its key, the roots and the settings to.")
    @click.option("--ttl", type=DURATION, default="8760h", show_default=True, help="Lifetime of the intermediate.")
    @click.pass_context
    def ca_intermediate(ctx: click.Context, host: str, out_dir: Path, ttl: float) -> None:
        """On the host holding the mesh root: issue an intermediate CA for HOST. Carry the directory
        to that host (it holds a private key) and run `meshns ca import-intermediate DIR` there."""
        from meshns.mesh import require_root
        from meshns.mtls.ca import CertAuthority, key_pem, new_key
        from meshns.mtls.handoff import Handoff, refuse_existing, write_handoff
        from meshns.mtls.intermediate import validate_host

        require_root("meshns ca intermediate")
        validate_host(host)
        refuse_existing(out_dir)
        mesh = mesh_of(ctx)
        if not CertAuthority.exists(mesh.cfg.ca_dir):
            raise NotFoundError("no CA yet (create it with `meshns ca init`)")
        authority = CertAuthority.load(mesh.cfg.ca_dir)
        key = new_key()
        issued = authority.issue_intermediate(host, key.public_key(), ttl)
        write_handoff(out_dir, Handoff(authority.trust_domain, authority.workload_ttl_s, authority.bundle_pem(),
                                       issued.cert_pem, key_pem(key)))
        click.echo(f"intermediate {issued.serial} for host {host}, valid until {_stamp(issued.not_after)}, "
                   f"written to {out_dir}; on {host} run: meshns ca import-intermediate {out_dir}")

    @ca.command("import-intermediate")
    @click.argument("src", metavar="DIR", type=click.Path(path_type=Path))
    @click.option("--replace", is_flag=True,
                  help="Replace the intermediate and roots of this host's intermediate-mode CA (a renewal).")
    @click.pass_context
    def ca_import_intermediate(ctx: click.Context, src: Path, replace: bool) -> None:
        """Make this host's CA sign with the intermediate in DIR (from `meshns ca intermediate`)."""
        from meshns.mesh import require_root
        from meshns.mtls.ca import CertAuthority
        from meshns.mtls.handoff import read_handoff

        require_root("meshns ca import-intermediate")
        handoff = read_handoff(src)
        mesh = mesh_of(ctx)
        if replace and CertAuthority.exists(mesh.cfg.ca_dir):
            # The CA keeps its trust domain; an intermediate for another one fails its SAN check.
            serial = CertAuthority.load(mesh.cfg.ca_dir).install_intermediate(
                handoff.roots_pem, handoff.intermediate_cert_pem, handoff.intermediate_key_pem)
            click.echo(f"intermediate {serial} installed; workload certificates are being re-issued from it")
            return
        existed = CertAuthority.exists(mesh.cfg.ca_dir)
        authority = CertAuthority.init_intermediate(mesh.cfg.ca_dir, handoff.trust_domain, handoff.workload_ttl_s,
                                                    handoff.roots_pem, handoff.intermediate_cert_pem,
                                                    handoff.intermediate_key_pem)
        inter = authority.intermediate
        assert inter is not None
        click.echo(f"{'already imported' if existed else 'imported'}: intermediate {inter.serial} for host "
                   f"{inter.host or '?'}, trust domain {authority.trust_domain}, valid until "
                   f"{_stamp(inter.not_after)}, in {mesh.cfg.ca_dir}")

    @ca.command("rotate")
    @click.option("--wait", "wait_s", type=float, default=ROTATE_WAIT_S, show_default=True,
                  help="Seconds to wait for every sidecar to trust the new root before signing with it.")
    @click.pass_context
    def ca_rotate(ctx: click.Context, wait_s: float) -> None:
        """Roll the root: the new root is trusted everywhere first, then signs; the old one stays
        trusted until every certificate it signed has expired."""
        from meshns.mesh import require_root
        from meshns.mtls.ca import CertAuthority

        require_root("meshns ca rotate")
        mesh = mesh_of(ctx)
        if not CertAuthority.exists(mesh.cfg.ca_dir):
            raise NotFoundError("no CA yet")
        authority = CertAuthority.load(mesh.cfg.ca_dir)
        serial = authority.rotate_begin()
        generation = CertAuthority.load(mesh.cfg.ca_dir).generation
        lagging = _wait_for_generation(mesh, generation, wait_s)
        if lagging:
            raise SystemFailure(
                f"new root {serial} is pending: pods {', '.join(lagging)} did not confirm they trust it within "
                f"{wait_s:g} s; nothing signs with it yet. Fix them and run `meshns ca rotate` again")
        time.sleep(ROTATE_SETTLE_S)
        CertAuthority.load(mesh.cfg.ca_dir).rotate_commit()
        click.echo(f"root {serial} active; workload certificates are being re-issued from it")

    @cli.group()
    def cert() -> None:
        """Workload certificates."""

    @cert.command("show")
    @click.argument("pod")
    @output
    @click.pass_context
    def cert_show(ctx: click.Context, pod: str, fmt: str) -> None:
        """Identity, serial and validity of POD's current certificate."""
        mesh = mesh_of(ctx)
        if mesh.registry.get_pod(pod) is None:
            raise NotFoundError(f"pod {pod!r} does not exist")
        info = read_cert_info(mesh.cfg.pod_dir(pod))
        if info is None:
            raise NotFoundError(f"pod {pod!r} has no certificate yet")
        doc = {k: info.get(k) for k in ("identity", "serial", "not_before", "not_after", "issued_at", "roots")}
        doc["issuer"], doc["chain"] = _issuer(info.get("cert_pem"))
        emit(doc, fmt, "\n".join(
            f"{k:<11} {v}" for k, v in (
                ("identity", info.get("identity")), ("serial", info.get("serial")),
                ("issuer", doc["issuer"]), ("chain", doc["chain"]),
                ("not before", _stamp(info.get("not_before"))), ("not after", _stamp(info.get("not_after"))),
                ("issued", _stamp(info.get("issued_at"))), ("roots", info.get("roots")))))

    @cli.group()
    def identity() -> None:
        """Revoke and restore workload identities."""

    @identity.command("revoke")
    @click.argument("target")
    @click.pass_context
    def identity_revoke(ctx: click.Context, target: str) -> None:
        """Every sidecar refuses TARGET (a pod name or a spiffe:// ID) within about a second:
        new connections and new requests, whatever its certificate's expiry."""
        from meshns.mesh import require_root
        from meshns.netns.publish import publish

        require_root("meshns identity revoke")
        mesh = mesh_of(ctx)
        spiffe = _resolve(mesh, target)
        added = mesh.registry.revoke(spiffe)
        publish(mesh)
        click.echo(f"revoked {spiffe}" if added else f"{spiffe} was already revoked")

    @identity.command("unrevoke")
    @click.argument("target")
    @click.pass_context
    def identity_unrevoke(ctx: click.Context, target: str) -> None:
        """Take TARGET off the revocation list."""
        from meshns.mesh import require_root
        from meshns.netns.publish import publish

        require_root("meshns identity unrevoke")
        mesh = mesh_of(ctx)
        spiffe = _resolve(mesh, target)
        if not mesh.registry.unrevoke(spiffe):
            raise NotFoundError(f"{spiffe} is not revoked")
        publish(mesh)
        click.echo(f"restored {spiffe}")

    @identity.command("list")
    @output
    @click.pass_context
    def identity_list(ctx: click.Context, fmt: str) -> None:
        """Pods with their identities, and the revoked identities."""
        from meshns.mtls.ca import CertAuthority

        mesh = mesh_of(ctx)
        td = CertAuthority.load(mesh.cfg.ca_dir).trust_domain if CertAuthority.exists(mesh.cfg.ca_dir) else None
        revoked = set(mesh.registry.list_revoked())
        rows = [{"pod": p.name, "identity": identity_of(p, td) or "-",
                 "revoked": "yes" if identity_of(p, td) in revoked else "no"}
                for p in mesh.registry.list_pods() if p.state != PodState.DELETING]
        known = {r["identity"] for r in rows}
        rows += [{"pod": "-", "identity": r, "revoked": "yes"} for r in sorted(revoked - known)]
        emit(rows, fmt, table(["POD", "IDENTITY", "REVOKED"], [[r["pod"], r["identity"], r["revoked"]] for r in rows]))


def _resolve(mesh: Mesh, target: str) -> str:
    from meshns.mtls.ca import CertAuthority

    if target.startswith("spiffe://"):
        try:
            return SpiffeId.parse(target).uri
        except IdentityError as exc:
            raise UserError(str(exc)) from None
    pod = mesh.registry.get_pod(target)
    if pod is None:
        raise NotFoundError(f"{target!r} is neither a pod nor a spiffe:// ID")
    if not CertAuthority.exists(mesh.cfg.ca_dir):
        raise NotFoundError("no CA yet, so no identities")
    return identity_of(pod, CertAuthority.load(mesh.cfg.ca_dir).trust_domain)


def _wait_for_generation(mesh: Mesh, generation: int, wait_s: float) -> list[str]:
    """Pods whose sidecar has not been sent CA state ``generation`` (or later) within wait_s."""
    deadline = time.monotonic() + wait_s
    while True:
        lagging = []
        for p in mesh.registry.list_pods():
            if p.state != PodState.READY:
                continue
            info = read_cert_info(mesh.cfg.pod_dir(p.name)) or {}
            have = info.get("ca_generation")
            if not isinstance(have, int) or have < generation:
                lagging.append(p.name)
        if not lagging or time.monotonic() >= deadline:
            return lagging
        time.sleep(0.1)
