"""The embedded registry: one SQLite database under the state directory.

Why SQLite: transactions and cross-process locking with no server. Writers take the database
lock up front (BEGIN IMMEDIATE) so read-modify-write sequences such as address allocation are
serialised between processes; a writer that finds the lock held waits up to ``busy_timeout_s``
(MESHNS_REGISTRY_WAIT, see meshns.mesh) and then fails with a clear RegistryError instead of
hanging. WAL mode lets ``list``/``status`` read while a create is in progress, and opening an
existing registry writes nothing, so reads work while another process holds the write lock.
Every sqlite3 error is mapped by meshns.statefs (locked, disk full, read-only, not a database).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from ipaddress import IPv4Address
from pathlib import Path
from typing import TypeVar

from meshns.errors import ConflictError, RegistryError
from meshns.model import PodRecord, PodSpec, PodState, RemotePod, ServiceRecord
from meshns.registry import Allocator, ConfigKey, ConfigRow
from meshns.statefs import registry_error

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pods (
    name TEXT PRIMARY KEY,
    ip TEXT NOT NULL UNIQUE,
    netns TEXT NOT NULL UNIQUE,
    veth TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    spec TEXT NOT NULL,
    owner_pid INTEGER,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS services (
    name TEXT PRIMARY KEY,
    vip TEXT NOT NULL UNIQUE,
    ports TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS configs (
    kind TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    doc TEXT NOT NULL,
    applied_at REAL NOT NULL,
    PRIMARY KEY (kind, namespace, name)
);
CREATE TABLE IF NOT EXISTS revocations (
    identity TEXT PRIMARY KEY,
    revoked_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS remote_pods (
    host TEXT NOT NULL,
    name TEXT NOT NULL,
    ip TEXT NOT NULL,
    spec TEXT NOT NULL,
    PRIMARY KEY (host, name)
);
INSERT OR IGNORE INTO meta (key, value) VALUES ('generation', '0');
"""
TABLES = ("meta", "pods", "services", "configs", "revocations", "remote_pods")


class SqliteRegistry:
    def __init__(self, path: Path, busy_timeout_s: float = 10.0) -> None:
        self.path = path
        self.busy_timeout_s = busy_timeout_s
        self._began = time.monotonic()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), timeout=busy_timeout_s, isolation_level=None)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        except OSError as exc:
            raise RegistryError(f"registry {path}: {exc.strerror or exc}") from exc
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            if not self._has_schema():
                # CREATE ... IF NOT EXISTS is idempotent, so concurrent first uses are harmless.
                # Skipped when the tables exist: the script's INSERT would need the write lock,
                # and a read-only command must not wait for (or fail on) another writer.
                self._began = time.monotonic()
                self._db.executescript(SCHEMA)
        except sqlite3.Error as exc:
            self._db.close()
            raise self._error(exc) from exc

    def _has_schema(self) -> bool:
        marks = ",".join("?" * len(TABLES))
        row = self._db.execute(f"SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ({marks})",  # noqa: S608
                               TABLES).fetchone()
        return bool(row and row[0] == len(TABLES))

    def _error(self, exc: sqlite3.Error) -> RegistryError:
        return registry_error(exc, self.path, time.monotonic() - self._began)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        self._began = time.monotonic()  # how long BEGIN IMMEDIATE waited goes into a lock error
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        try:
            yield self._db
        except BaseException:
            self._rollback()
            raise
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise self._error(exc) from exc

    def _rollback(self) -> None:
        # A failed COMMIT (disk full) may already have ended the transaction; the first error
        # is the one to report, never "cannot rollback - no transaction is active".
        if self._db.in_transaction:
            with suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")

    def _read(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        self._began = time.monotonic()
        try:
            return list(self._db.execute(sql, args).fetchall())
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def get_meta(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in self._read("SELECT key, value FROM meta")
                if k != "generation"}

    def generation(self) -> int:
        rows = self._read("SELECT value FROM meta WHERE key = 'generation'")
        return int(str(rows[0][0])) if rows else 0

    @staticmethod
    def _bump(db: sqlite3.Connection) -> None:
        """Every change a sidecar can see moves the generation on; snapshots carry it."""
        db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")

    def _txn(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            with self._write() as db:
                return fn(db)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def set_meta_if_absent(self, values: dict[str, str]) -> dict[str, str]:
        try:
            with self._write() as db:
                db.executemany(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", sorted(values.items())
                )
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        return self.get_meta()

    def reserve_pod(
        self, name: str, netns: str, veth: str, spec: PodSpec, owner_pid: int, allocate: Allocator
    ) -> PodRecord:
        now = time.time()
        try:
            with self._write() as db:
                if db.execute("SELECT 1 FROM pods WHERE name = ?", (name,)).fetchone():
                    raise ConflictError(f"pod {name!r} already exists")
                used = {IPv4Address(str(r[0])) for r in db.execute("SELECT ip FROM pods")}
                ip = allocate(used)
                db.execute(
                    "INSERT INTO pods (name, ip, netns, veth, state, spec, owner_pid, created_at,"
                    " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (name, str(ip), netns, veth, PodState.CREATING.value, spec.to_json(), owner_pid,
                     now, now),
                )
        except sqlite3.IntegrityError as exc:
            raise ConflictError(f"pod {name!r} clashes with an existing pod: {exc}") from exc
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        return PodRecord(name, ip, netns, veth, PodState.CREATING, spec, owner_pid, now, now)

    def set_state(self, name: str, state: PodState, owner_pid: int | None) -> None:
        try:
            with self._write() as db:
                db.execute(
                    "UPDATE pods SET state = ?, owner_pid = ?, updated_at = ? WHERE name = ?",
                    (state.value, owner_pid, time.time(), name),
                )
                self._bump(db)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    @staticmethod
    def _record(row: tuple[object, ...]) -> PodRecord:
        name, ip, netns, veth, state, spec, owner, created, updated = row
        return PodRecord(
            name=str(name), ip=IPv4Address(str(ip)), netns=str(netns), veth=str(veth),
            state=PodState(str(state)), spec=PodSpec.from_json(str(spec)),
            owner_pid=int(str(owner)) if owner is not None else None,
            created_at=float(str(created)), updated_at=float(str(updated)),
        )

    _COLUMNS = "name, ip, netns, veth, state, spec, owner_pid, created_at, updated_at"

    def get_pod(self, name: str) -> PodRecord | None:
        rows = self._read(f"SELECT {self._COLUMNS} FROM pods WHERE name = ?", (name,))  # noqa: S608
        return self._record(rows[0]) if rows else None

    def list_pods(self) -> list[PodRecord]:
        rows = self._read(f"SELECT {self._COLUMNS} FROM pods ORDER BY name")  # noqa: S608
        return [self._record(r) for r in rows]

    def remove_pod(self, name: str) -> None:
        try:
            with self._write() as db:
                db.execute("DELETE FROM pods WHERE name = ?", (name,))
                self._bump(db)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    # -- services ----------------------------------------------------------------------------
    def ensure_service(self, name: str, ports: tuple[tuple[int, int], ...],
                       allocate_vip: Allocator) -> ServiceRecord:
        """Create the service with a fresh VIP, or add ports to it; a port already mapped to
        another target port is a conflict."""

        def txn(db: sqlite3.Connection) -> ServiceRecord:
            row = db.execute("SELECT vip, ports, created_at FROM services WHERE name = ?", (name,)).fetchone()
            if row is None:
                used = {IPv4Address(str(r[0])) for r in db.execute("SELECT vip FROM services")}
                vip, now = allocate_vip(used), time.time()
                db.execute("INSERT INTO services (name, vip, ports, created_at) VALUES (?, ?, ?, ?)",
                           (name, str(vip), json.dumps(sorted(ports)), now))
                self._bump(db)
                return ServiceRecord(name, vip, tuple(sorted(ports)), now)
            have = {int(p): int(t) for p, t in json.loads(row[1])}
            for port, target in ports:
                if have.get(port, target) != target:
                    raise ConflictError(f"service {name!r} maps port {port} to {have[port]}, not {target}")
            merged = tuple(sorted({**have, **dict(ports)}.items()))
            if len(merged) != len(have):
                db.execute("UPDATE services SET ports = ? WHERE name = ?", (json.dumps(merged), name))
                self._bump(db)
            return ServiceRecord(name, IPv4Address(str(row[0])), merged, float(row[2]))

        return self._txn(txn)

    def list_services(self) -> list[ServiceRecord]:
        rows = self._read("SELECT name, vip, ports, created_at FROM services ORDER BY name")
        return [ServiceRecord(str(n), IPv4Address(str(v)),
                              tuple((int(p), int(t)) for p, t in json.loads(str(ps))), float(str(c)))
                for n, v, ps, c in rows]

    def remove_service(self, name: str) -> bool:
        def txn(db: sqlite3.Connection) -> bool:
            gone = db.execute("DELETE FROM services WHERE name = ?", (name,)).rowcount > 0
            if gone:
                self._bump(db)
            return gone

        return self._txn(txn)

    # -- applied config ------------------------------------------------------------------------
    def put_configs(self, rows: list[ConfigRow]) -> None:
        """Store documents all together or not at all (one transaction)."""

        def txn(db: sqlite3.Connection) -> None:
            now = time.time()
            for r in rows:
                old = db.execute("SELECT applied_at, doc FROM configs WHERE kind = ? AND namespace = ? AND"
                                 " name = ?", (r.kind, r.namespace, r.name)).fetchone()
                # Re-applying keeps the original order (oldest first decides between rivals).
                applied = float(old[0]) if old else now
                db.execute("INSERT OR REPLACE INTO configs (kind, namespace, name, doc, applied_at)"
                           " VALUES (?, ?, ?, ?, ?)", (r.kind, r.namespace, r.name, r.doc, applied))
            self._bump(db)

        self._txn(txn)

    def list_configs(self) -> list[ConfigRow]:
        return [ConfigRow(str(k), str(ns), str(n), str(d), float(str(a))) for k, ns, n, d, a in self._read(
            "SELECT kind, namespace, name, doc, applied_at FROM configs ORDER BY applied_at, kind, name")]

    def delete_configs(self, keys: list[ConfigKey]) -> int:
        return sum(self.remove_configs(keys))

    def remove_configs(self, keys: list[ConfigKey]) -> list[bool]:
        def txn(db: sqlite3.Connection) -> list[bool]:
            found = [db.execute("DELETE FROM configs WHERE kind = ? AND namespace = ? AND name = ?",
                                key).rowcount > 0 for key in keys]
            if any(found):
                self._bump(db)
            return found

        return self._txn(txn)

    def get_configs(self, keys: list[ConfigKey]) -> list[ConfigRow]:
        rows = []
        for key in keys:
            rows += [ConfigRow(str(k), str(ns), str(n), str(d), float(str(a))) for k, ns, n, d, a in self._read(
                "SELECT kind, namespace, name, doc, applied_at FROM configs WHERE kind = ? AND namespace = ?"
                " AND name = ?", key)]
        return rows

    def restore_configs(self, rows: list[ConfigRow], absent: list[ConfigKey]) -> None:
        def txn(db: sqlite3.Connection) -> None:
            for key in absent:
                db.execute("DELETE FROM configs WHERE kind = ? AND namespace = ? AND name = ?", key)
            db.executemany("INSERT OR REPLACE INTO configs (kind, namespace, name, doc, applied_at)"
                           " VALUES (?, ?, ?, ?, ?)", [(r.kind, r.namespace, r.name, r.doc, r.applied_at)
                                                        for r in rows])
            self._bump(db)

        self._txn(txn)

    # -- revoked identities --------------------------------------------------------------------
    def revoke(self, identity: str) -> bool:
        def txn(db: sqlite3.Connection) -> bool:
            done = db.execute("INSERT OR IGNORE INTO revocations (identity, revoked_at) VALUES (?, ?)",
                              (identity, time.time())).rowcount > 0
            if done:
                self._bump(db)
            return done

        return self._txn(txn)

    def unrevoke(self, identity: str) -> bool:
        def txn(db: sqlite3.Connection) -> bool:
            done = db.execute("DELETE FROM revocations WHERE identity = ?", (identity,)).rowcount > 0
            if done:
                self._bump(db)
            return done

        return self._txn(txn)

    def list_revoked(self) -> list[str]:
        return [str(r[0]) for r in self._read("SELECT identity FROM revocations ORDER BY identity")]

    # -- other hosts' pods (multi-host: written only by this host's agent) ----------------------
    def replace_remote_pods(self, pods: list[RemotePod]) -> bool:
        """Make the stored set of other hosts' pods exactly ``pods``; True if that changed it
        (and then the generation moves on, so sidecars reload)."""
        want = sorted((p.host, p.name, str(p.ip), p.spec.to_json()) for p in pods)

        def txn(db: sqlite3.Connection) -> bool:
            have = sorted((str(h), str(n), str(i), str(s)) for h, n, i, s in
                          db.execute("SELECT host, name, ip, spec FROM remote_pods"))
            if have == want:
                return False
            db.execute("DELETE FROM remote_pods")
            db.executemany("INSERT INTO remote_pods (host, name, ip, spec) VALUES (?, ?, ?, ?)", want)
            self._bump(db)
            return True

        return self._txn(txn)

    def list_remote_pods(self) -> list[RemotePod]:
        rows = self._read("SELECT host, name, ip, spec FROM remote_pods ORDER BY host, name")
        return [RemotePod(str(h), str(n), IPv4Address(str(i)), PodSpec.from_json(str(s))) for h, n, i, s in rows]

    def set_meta(self, values: dict[str, str], remove: tuple[str, ...] = ()) -> None:
        """Overwrite mesh settings (host join records the claimed pod CIDR and the cluster CIDR;
        the caller checks no pod depends on the old values)."""
        def txn(db: sqlite3.Connection) -> None:
            db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", sorted(values.items()))
            db.executemany("DELETE FROM meta WHERE key = ?", [(k,) for k in remove])
            self._bump(db)

        self._txn(txn)

    def close(self) -> None:
        self._db.close()
