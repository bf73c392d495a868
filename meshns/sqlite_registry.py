"""The embedded registry: one SQLite database under the state directory.

Why SQLite: transactions and cross-process locking with no server. Writers take the database
lock up front (BEGIN IMMEDIATE) so read-modify-write sequences such as address allocation are
serialised between processes; a writer that finds the lock held waits up to ``busy_timeout_s``
and then fails with a clear RegistryError instead of hanging. WAL mode lets ``list``/``status``
read while a create is in progress.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from ipaddress import IPv4Address
from pathlib import Path
from typing import TypeVar

from meshns.errors import ConflictError, RegistryError
from meshns.model import PodRecord, PodSpec, PodState, ServiceRecord
from meshns.registry import Allocator, ConfigRow

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
INSERT OR IGNORE INTO meta (key, value) VALUES ('generation', '0');
"""


def _map_error(exc: sqlite3.Error, path: Path, waited_s: float) -> RegistryError:
    text = str(exc)
    if "locked" in text or "busy" in text:
        return RegistryError(f"registry {path} is locked by another process (waited {waited_s:.0f} s)")
    if "disk" in text or "full" in text:
        return RegistryError(f"registry {path}: the disk is full; nothing was changed")
    return RegistryError(f"registry {path}: {text}")


class SqliteRegistry:
    def __init__(self, path: Path, busy_timeout_s: float = 10.0) -> None:
        self.path = path
        self.busy_timeout_s = busy_timeout_s
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), timeout=busy_timeout_s, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            # CREATE ... IF NOT EXISTS is idempotent, so concurrent first uses are harmless.
            self._db.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise _map_error(exc, path, busy_timeout_s) from exc
        except OSError as exc:
            raise RegistryError(f"registry {path}: {exc.strerror or exc}") from exc

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise _map_error(exc, self.path, self.busy_timeout_s) from exc
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._db.execute("ROLLBACK")
            raise _map_error(exc, self.path, self.busy_timeout_s) from exc

    def _read(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        try:
            return list(self._db.execute(sql, args).fetchall())
        except sqlite3.Error as exc:
            raise _map_error(exc, self.path, self.busy_timeout_s) from exc

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
            raise _map_error(exc, self.path, self.busy_timeout_s) from exc

    def set_meta_if_absent(self, values: dict[str, str]) -> dict[str, str]:
        try:
            with self._write() as db:
                db.executemany(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", sorted(values.items())
                )
        except sqlite3.Error as exc:
            raise _map_error(exc, self.path, self.busy_timeout_s) from exc
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
            raise _map_error(exc, self.path, self.busy_timeout_s) from exc
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
            raise _map_error(exc, self.path, self.busy_timeout_s) from exc

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
            raise _map_error(exc, self.path, self.busy_timeout_s) from exc

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

    def delete_configs(self, keys: list[tuple[str, str, str]]) -> int:
        def txn(db: sqlite3.Connection) -> int:
            n = sum(db.execute("DELETE FROM configs WHERE kind = ? AND namespace = ? AND name = ?",
                               key).rowcount for key in keys)
            if n:
                self._bump(db)
            return n

        return self._txn(txn)

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

    def close(self) -> None:
        self._db.close()
