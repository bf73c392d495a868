"""The meshns command line: parse, call, print. No logic lives here."""

from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import re
import sys
import threading
from gc import collect as gc_collect
from typing import TYPE_CHECKING, Any

import click

from meshns.cli import security_cmds
from meshns.cli.output import emit, table
from meshns.cli.security_cmds import DURATION, validate_identity_parts
from meshns.config import ConfigRequest
from meshns.errors import MeshnsError, NotFoundError, UserError
from meshns.intercept.spec import parse_cidr_list, parse_port_list
from meshns.model import PodSpec, PodState
from meshns.names import parse_label, parse_service_decl
from meshns.trace import mark

if TYPE_CHECKING:
    from meshns.mesh import Mesh

# Every invocation imports this module and the command modules, so they import only what parsing
# needs: each command imports its own machinery (the registry, pyroute2, python-iptables, the
# CA...) when it runs. `meshns --help` and `list` stay fast, and `create` pays for what it uses
# (tests/unit/test_cli_imports.py keeps it so).

OUTPUT = click.option("-o", "--output", "fmt", type=click.Choice(["table", "json"]), default="table",
                      show_default=True, help="Output format.")


class Size(click.ParamType):  # type: ignore[type-arg]
    """A byte count for ``create --max-request-body``: plain bytes, or K, M, G (binary multiples,
    also written KiB, MB...)."""

    name = "size"
    _FORM = re.compile(r"(\d+)\s*([KMG]?)(?:I?B)?", re.IGNORECASE)
    _UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        m = self._FORM.fullmatch(str(value).strip())
        if m is None:
            self.fail(f"{value!r} is not a size (bytes, or a number with K, M or G)", param, ctx)
        return int(m.group(1)) * self._UNITS[m.group(2).upper()]


SIZE = Size()


def _mesh(ctx: click.Context, *, record: bool = False) -> Mesh:
    from meshns.mesh import Mesh

    req: ConfigRequest = ctx.obj
    mesh = Mesh.open(req, record=record)
    # Closed when the command ends, not whenever the interpreter frees it: run() ends with
    # os._exit, and only a closed last connection folds SQLite's WAL back into registry.db.
    ctx.call_on_close(mesh.close)
    return mesh


# Commands defined in other modules, loaded when named (or when all are listed, for --help):
# their imports (the cluster client, the status collector, the Istio reader...) are about 60 ms
# that create and the other commands of this module do not need. security_cmds is not here:
# create's options use its parameter types.
LAZY_COMMANDS = {
    "apply": "config_cmds", "get": "config_cmds", "service": "config_cmds",
    "status": "ops_cmds", "top": "ops_cmds", "logs": "ops_cmds", "metrics": "ops_cmds", "explain": "ops_cmds",
    "host": "host_cmds",
}


class LazyGroup(click.Group):
    """A group whose LAZY_COMMANDS modules register their commands on first use."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._loaded: set[str] = set()

    def _load(self, module: str) -> None:
        if module in self._loaded:
            return
        self._loaded.add(module)
        importlib.import_module(f"meshns.cli.{module}").register(self, _mesh, OUTPUT)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in LAZY_COMMANDS:
            self._load(LAZY_COMMANDS[cmd_name])
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        for module in sorted(set(LAZY_COMMANDS.values())):
            self._load(module)
        return super().list_commands(ctx)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--state-dir", envvar="MESHNS_STATE_DIR", help="State directory [default: /var/lib/meshns].")
@click.option("--bridge", envvar="MESHNS_BRIDGE", help="Host bridge for this mesh [default: meshns0].")
@click.option("--pod-cidr", envvar="MESHNS_POD_CIDR", help="Pod address range [default: 10.188.0.0/16].")
@click.option("--ns-prefix", envvar="MESHNS_NS_PREFIX", help="Namespace name prefix [default: meshns-].")
@click.version_option(package_name="meshns")
@click.pass_context
def cli(ctx: click.Context, state_dir: str | None, bridge: str | None, pod_cidr: str | None,
        ns_prefix: str | None) -> None:
    """meshns: meshed pods on plain Linux (network namespaces + iptables + a sidecar)."""
    ctx.obj = ConfigRequest(state_dir, bridge, pod_cidr, ns_prefix)


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("app", nargs=-1, type=click.UNPROCESSED)
@click.option("--exclude-outbound-ports", default="", metavar="PORTS",
              help="Comma-separated outbound ports not sent through the sidecar.")
@click.option("--exclude-inbound-ports", default="", metavar="PORTS",
              help="Comma-separated inbound ports delivered straight to the app.")
@click.option("--exclude-outbound-cidrs", default="", metavar="CIDRS",
              help="Comma-separated destination ranges not sent through the sidecar.")
@click.option("--ready-timeout", default=10.0, show_default=True, type=float,
              help="Seconds to wait for the sidecar, the validation probes and the app to accept on its service ports.")
@click.option("--service", "services", multiple=True, metavar="NAME:PORT[:TARGET]",
              help="Serve service NAME's PORT (on TARGET_PORT in the pod). Repeatable.")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE",
              help="Pod label, e.g. version=v2 (DestinationRule subsets select on them). Repeatable.")
@click.option("--http-parser", type=click.Choice(["auto", "httptools", "h11"]), default="auto", show_default=True,
              help="The sidecar's HTTP/1 parser: httptools (llhttp) is the fast path, h11 the reference.")
@click.option("--drain-timeout", default=5.0, show_default=True, type=click.FloatRange(min=0.0, min_open=True),
              help="On delete, seconds the sidecar lets in-flight requests finish (after the app stopped).")
@click.option("--max-request-body", "max_request_body", type=SIZE, default="0", show_default=True, metavar="SIZE",
              help="Refuse HTTP/1 request bodies larger than SIZE bytes with 413 (K/M/G suffixes; 0: no limit).")
@click.option("--request-headers-timeout", default=10.0, show_default=True,
              type=click.FloatRange(min=0.0, min_open=True), metavar="SECONDS",
              help="Refuse an HTTP/1 request whose head is not complete this long after its first byte (408).")
@click.option("--namespace", "namespace", default="default", show_default=True,
              help="Namespace of the pod's identity (spiffe://<trust-domain>/ns/NAMESPACE/sa/<account>).")
@click.option("--service-account", default="", help="Service account of the pod's identity [default: the pod's name].")
@click.option("--cert-ttl", type=DURATION, default=None,
              help="Workload certificate lifetime, e.g. 24h, 30m, 10s [default: the CA's, 24h]; renewed at half of it.")
@click.option("--dry-run", is_flag=True, help="Print the namespace plan and the rules; change nothing.")
@click.pass_context
def create(ctx: click.Context, name: str, app: tuple[str, ...], exclude_outbound_ports: str,
           exclude_inbound_ports: str, exclude_outbound_cidrs: str, ready_timeout: float,
           services: tuple[str, ...], labels: tuple[str, ...], http_parser: str, drain_timeout: float,
           max_request_body: int, request_headers_timeout: float, namespace: str, service_account: str,
           cert_ttl: float | None, dry_run: bool) -> None:
    """Create pod NAME (optionally running APP inside it: create NAME -- CMD ARGS...)."""
    from meshns.mesh import Mesh, require_root
    from meshns.netns import lifecycle

    spec = PodSpec(
        app=tuple(app),
        services=tuple(parse_service_decl(s) for s in services),
        labels=tuple(sorted(dict(parse_label(x) for x in labels).items())),
        http_parser=http_parser,
        drain_timeout_s=drain_timeout,
        max_request_body_bytes=max_request_body,
        request_headers_timeout_s=request_headers_timeout,
        exclude_outbound_ports=parse_port_list(exclude_outbound_ports),
        exclude_inbound_ports=parse_port_list(exclude_inbound_ports),
        exclude_outbound_cidrs=parse_cidr_list(exclude_outbound_cidrs),
        namespace=namespace,
        service_account=service_account,
        cert_ttl_s=cert_ttl,
    )
    validate_identity_parts(name, spec)
    if dry_run:
        cfg, pods = Mesh.peek(ctx.obj)
        click.echo(lifecycle.dry_run(cfg, pods, name, spec), nl=False)
        return
    require_root("meshns create")
    mark("cli:create-imported")
    mesh = _mesh(ctx, record=True)
    mark("cli:mesh-open")
    result = lifecycle.create(mesh, name, spec, ready_timeout)
    state = result.state
    click.echo(f"pod {name} ready at {result.record.ip} in {result.seconds:.2f} s "
               f"(sidecar pid {state.get('sidecar_pid')}, app pid {state.get('app_pid') or '-'})")


@cli.command()
@click.argument("names", nargs=-1)
@click.option("-f", "--filename", help="Delete the config documents in this file instead of pods.")
@click.pass_context
def delete(ctx: click.Context, names: tuple[str, ...], filename: str | None) -> None:
    """Delete pods (app stopped, sidecar stopped, namespace, veth and rules removed), or with
    -f FILE the applied config documents it names."""
    from meshns.mesh import require_root
    from meshns.netns import lifecycle

    if filename is not None:
        if names:
            raise UserError("give pod names or -f FILE, not both")
        from meshns.cli import config_cmds

        for kind, name, found in config_cmds.delete_file(_mesh(ctx), filename):
            click.echo(f"{kind.lower()}/{name} {'deleted' if found else 'not found'}")
        return
    if not names:
        raise UserError("nothing to delete: give pod names or -f FILE")
    require_root("meshns delete")
    mesh = _mesh(ctx)
    for name in names:
        lifecycle.delete(mesh, name)
        click.echo(f"pod {name} deleted")


@cli.command(name="exec", context_settings={"ignore_unknown_options": True,
                                            "allow_interspersed_args": False})
@click.argument("name")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
def exec_(ctx: click.Context, name: str, command: tuple[str, ...]) -> None:
    """Run COMMAND inside pod NAME, through its sidecar (exec NAME -- CMD ARGS...)."""
    from meshns.mesh import require_root
    from meshns.netns import sandbox

    require_root("meshns exec")
    mesh = _mesh(ctx)
    record = mesh.registry.get_pod(name)
    if record is None:
        raise NotFoundError(f"pod {name!r} does not exist")
    if record.state != PodState.READY:
        raise UserError(f"pod {name!r} is {record.state.value}, not ready")
    mesh.close()
    if command[:1] == ("--",):
        command = command[1:]
    if not command:
        raise UserError("no command given: meshns exec POD -- CMD ARGS...")
    sys.stdout.flush()
    # The app's view of the pod (netns/sandbox.py): the same one the pod's own app gets, so a
    # legacy binary run this way cannot change the rules or read the mesh's keys either.
    # Our exit code becomes the command's.
    try:
        sandbox.enter(record.netns, sandbox.hidden_dirs(mesh.cfg.state_dir))
        os.execvp(command[0], list(command))
    except OSError as exc:
        click.echo(f"meshns: error: cannot run {command[0]!r} in pod {name!r}: {exc.strerror or exc}", err=True)
        sys.exit(127 if isinstance(exc, FileNotFoundError) else 126)


@cli.command(name="list")
@OUTPUT
@click.pass_context
def list_(ctx: click.Context, fmt: str) -> None:
    """List pods."""
    from meshns.netns import status

    mesh = _mesh(ctx)
    rows = [status.summary(mesh, r) for r in mesh.registry.list_pods()]
    emit(rows, fmt, table(["NAME", "IP", "STATE", "SIDECAR", "APP", "AGE"],
                          [[r["name"], r["ip"], r["state"], r["sidecar"], r["app"], _age(r["age_s"])]
                           for r in rows]))


def _age(seconds: float) -> str:
    s = int(seconds)
    return f"{s}s" if s < 120 else f"{s // 60}m" if s < 7200 else f"{s // 3600}h"


@cli.command()
@click.pass_context
def gc(ctx: click.Context) -> None:
    """Remove what a crashed or killed meshns left behind."""
    from meshns.mesh import require_root
    from meshns.netns import gc as gc_mod

    require_root("meshns gc")
    mesh = _mesh(ctx)
    done = gc_mod.gc(mesh)
    click.echo("\n".join(done) if done else "nothing to clean")


security_cmds.register(cli, _mesh, OUTPUT)


def main() -> None:
    mark("cli:main")
    try:
        cli.main(standalone_mode=False)
        mark("cli:done")
    except click.exceptions.Abort:
        click.echo("meshns: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except MeshnsError as exc:
        click.echo(f"meshns: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("meshns: interrupted", err=True)
        sys.exit(130)


def run() -> None:
    """The ``meshns`` console script: ``main``, then, after a success, a quick exit.

    Tearing the interpreter down (freeing every module and object, pyroute2's above all) takes
    longer than some commands' own work: about 0.1 s after ``create``, which a script creating
    pods one after another waits for. A command closes its files and its mesh (the registry) before
    it returns; what the teardown would still do is flushing our output, the atexit handlers
    (logging, open registries) and freeing objects in reference cycles, and that is done here. Only with no other thread
    running (one would be cut off). Tests call ``main`` in-process and are unaffected.
    """
    main()
    if threading.active_count() != 1:
        return
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed or broken pipe: let the normal exit report it
        return
    atexit._run_exitfuncs()
    # Objects caught in reference cycles are otherwise freed only by the teardown skipped here: a
    # file object's buffer or an SQLite connection's close (which folds the WAL back) would be
    # lost with them. One collection (10-15 ms after create's imports) frees them properly.
    gc_collect()
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    run()
