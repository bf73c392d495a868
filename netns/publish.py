"""Publishing: after any change, every pod gets fresh hosts entries and a fresh snapshot.

Runs under the mesh lock so two writers cannot interleave an older view after a newer one.
Snapshots are written to a temporary name and renamed, so a sidecar never reads half a file;
hosts files are rewritten in place (see netns.files) because running programs hold a bind
mount of them.

A pod's snapshot is two files (see meshns.snapshot): ``snapshot.json``, the mesh-wide part, is
encoded once, staged once in the state directory and hard-linked into every pod directory under a
temporary name, so a publish costs one encoding and one file write whatever the number of pods,
and replacing a pod's link frees no inode; ``security.json``, the pod's own part, is staged only
where its text changed (a create rewrites the new pod's alone). Every security file is renamed
before any snapshot.json: the sidecar reads snapshot.json first, so when it sees a version its
security is at least that new.

All files are staged before any is renamed into place: on a full state directory the staging
fails, the temporary files are removed, and every pod keeps the snapshot it had (no mix of old and
new views across pods). ``stale`` tells gc whether a killed command left the pods behind the
registry (a snapshot older than the registry's generation, a hosts file that differs from what the
registry says), so gc can republish.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from meshns.model import PodRecord, PodState, RemotePod, ServiceRecord
from meshns.netns import files
from meshns.snapshot import SECURITY_FILE, SNAPSHOT_FILE
from meshns.statefs import state_writes

if TYPE_CHECKING:
    from meshns.mesh import Mesh

__all__ = ["SECURITY_FILE", "SNAPSHOT_FILE", "publish", "stale"]

# Hard links cannot cross file systems (a pods/ mounted elsewhere) and some file systems refuse
# them: the shared file is then written into each pod directory, as before the split.
_NO_LINK = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP)


def staged_name(path: Path) -> Path:
    """The temporary name ``path`` is staged under (gc knows the pattern: netns.gc)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _fresh_staged_name(path: Path) -> Path:
    """``staged_name(path)``, with any file of that name removed first. A leftover of a killed
    publish whose pid was ours may be a second name of every pod's live snapshot.json (killed
    after its renames, before it unlinked the shared file): unlinked, never truncated or reused."""
    tmp = staged_name(path)
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    return tmp


def _stage(path: Path, text: str) -> Path:
    """Write ``text`` next to ``path`` under a temporary name; nothing is left behind on failure."""
    return _write_staged(_fresh_staged_name(path), text)


def _write_staged(tmp: Path, text: str) -> Path:
    try:
        with open(tmp, "x", encoding="utf-8") as f:  # exclusively: see _fresh_staged_name
            f.write(text)
        os.chmod(tmp, 0o644)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return tmp


def _stage_link(shared: Path, path: Path, text: str) -> Path:
    """Stage ``path`` as a second name of the already staged ``shared`` (whose text is ``text``)."""
    tmp = _fresh_staged_name(path)
    try:
        os.link(shared, tmp)
    except OSError as exc:
        if exc.errno not in _NO_LINK:
            raise
        return _write_staged(tmp, text)
    return tmp


def security_writes(wanted: dict[str, str], on_disk: dict[str, str | None]) -> list[str]:
    """The pods whose security.json must be written: those whose file is missing or says
    something else (pure). Pods absent from ``on_disk`` have no file."""
    return [pod for pod, text in wanted.items() if on_disk.get(pod) != text]


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, ValueError):  # missing, unreadable or not UTF-8: written again
        return None


def hosts_text(pods: list[PodRecord], services: list[ServiceRecord],
               remote: list[RemotePod] | None = None) -> str:
    # A service and a pod may share a name (pod "web" serving service "web"). The service wins,
    # as in Kubernetes, where a name is a Service: with both lines, glibc answers with the first,
    # and callers would reach the pod directly, missing routes, balancing and retries.
    taken = {s.name for s in services}
    entries = [(p.name, p.ip) for p in pods if p.name not in taken]
    # Other hosts' pods are known as <pod>.<host>; pod names are only unique per host.
    entries += [(r.qualified, r.ip) for r in remote or () if r.qualified not in taken]
    return files.render_hosts(entries + [(s.name, s.vip) for s in services])


def ca_trust_domain(ca_dir: Path) -> str | None:
    """The mesh CA's trust domain, None if there is no CA yet. Read as CertAuthority.load reads it
    (its state file, under the CA's shared lock), without loading the CA's code: create and
    publish need only this, and cryptography is most of the CA's import time."""
    from meshns.mtls.ca_store import STATE_FILE, fs_errors, locked, read_state

    path = Path(ca_dir) / STATE_FILE
    with fs_errors(path):  # EACCES (not root) is an error, not "no CA"
        if not path.is_file():
            return None
    with locked(Path(ca_dir), exclusive=False):
        return read_state(Path(ca_dir)).trust_domain


def publish(mesh: Mesh, only: str | None = None) -> list[str]:
    """Rewrite every pod's hosts file and snapshot; returns compile warnings. With ``only``, that
    pod's files alone, as they would be written for every pod now (create's first publish,
    before the new pod's sidecar starts: see lifecycle._build)."""
    # The compiler (the Istio parsers, the snapshot model) is only needed here.
    from meshns.compiler import compile_services, pod_security, security_for, stored_docs, workloads_of
    from meshns.snapshot import mesh_json, security_json

    with mesh.locked():
        reg = mesh.registry
        generation = reg.generation()
        pods = reg.list_pods()
        remote = reg.list_remote_pods()
        everyone = pods + [r.as_record() for r in remote]  # endpoints and peers on every host
        services = reg.list_services()
        docs = stored_docs(reg.list_configs())
        ca_dir = mesh.cfg.ca_dir
        trust_domain = ca_trust_domain(ca_dir)
        sec = pod_security(everyone, docs, trust_domain)
        revoked = reg.list_revoked()
        compiled, warnings = compile_services(services, everyone, docs, sec)
        workloads = workloads_of(everyone, sec)
        targets = pods if only is None else [p for p in pods if p.name == only]
        dirs = {p.name: mesh.cfg.pod_dir(p.name) for p in targets}
        dirs = {name: d for name, d in dirs.items() if d.is_dir()}
        shared_text = mesh_json(generation, compiled, workloads)
        wanted = {name: security_json(name, security_for(name, sec, trust_domain, revoked)) for name in dirs}
        changed = security_writes(wanted, {name: _read_text(d / SECURITY_FILE) for name, d in dirs.items()})
        shared: Path | None = None
        own: list[tuple[Path, Path]] = []  # security.json, renamed first
        links: list[tuple[Path, Path]] = []  # snapshot.json, renamed after every security file
        try:
            with state_writes(mesh.cfg.state_dir, "writing the pods' snapshots"):
                for name in changed:
                    path = dirs[name] / SECURITY_FILE
                    own.append((_stage(path, wanted[name]), path))
                if dirs:
                    # Staged beside pods/ (the same file system), under the name gc looks for.
                    shared = staged = _stage(mesh.cfg.state_dir / SNAPSHOT_FILE, shared_text)
                    for d in dirs.values():
                        path = d / SNAPSHOT_FILE
                        links.append((_stage_link(staged, path, shared_text), path))
            hosts = hosts_text(pods, services, remote)
            for pod in targets:
                files.write_hosts(pod.netns, hosts)
        except BaseException:
            for tmp in [t for t, _ in own + links] + ([shared] if shared is not None else []):
                with contextlib.suppress(OSError):
                    tmp.unlink()
            raise
        for tmp, path in own + links:
            os.replace(tmp, path)
        if shared is not None:
            with contextlib.suppress(OSError):
                shared.unlink()  # its text lives on in the pods' links
    return warnings


@dataclass(frozen=True)
class PodView:
    """What a pod was last given, as read back from its files (None: no such file)."""

    name: str
    ready: bool
    snapshot_version: int | None
    hosts: str | None


def stale_pods(views: list[PodView], generation: int, hosts: str) -> list[str]:
    """Pods whose files lag behind the registry (pure). A pod still being created may have no
    files yet; a ready pod must have both."""
    out = []
    for v in views:
        behind = v.snapshot_version is not None and v.snapshot_version != generation
        wrong_hosts = v.hosts is not None and v.hosts != hosts
        missing = v.ready and (v.snapshot_version is None or v.hosts is None)
        if behind or wrong_hosts or missing:
            out.append(v.name)
    return out


def stale(mesh: Mesh) -> list[str]:
    """Names of the pods whose hosts file or snapshot is not what publish would write now."""
    reg = mesh.registry
    generation = reg.generation()
    pods = reg.list_pods()
    views = [PodView(p.name, p.state == PodState.READY, _snapshot_version(mesh.cfg.pod_dir(p.name)),
                     files.read_hosts(p.netns)) for p in pods]
    return stale_pods(views, generation, hosts_text(pods, reg.list_services(), reg.list_remote_pods()))


def _snapshot_version(pod_dir: Path) -> int | None:
    try:
        version = json.loads((pod_dir / SNAPSHOT_FILE).read_text(encoding="utf-8")).get("version")
    except (OSError, ValueError, AttributeError):
        return None
    return version if isinstance(version, int) else None
