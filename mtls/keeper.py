"""Keeps one workload's certificate fresh; the per-pod supervisor runs it and pipes results to the sidecar.

Theory of operation. ``current()`` issues the first certificate (a fresh key each time). The
supervisor then calls ``tick()`` now and then; it reads the small ca.json and answers with one of:

- keep: nothing to send;
- rebundle: the root set changed but our signer is still the active root (``rotate_begin`` added a
  pending root, or ``prune`` dropped a retired one): the same certificate and key go out again with
  the new bundle, so the sidecar trusts the new root before anybody is signed by it;
- reissue: half the lifetime has passed, or what signed us is no longer what signs (``rotate_commit``,
  or a new intermediate): a new key and a certificate from the current signer, with the current bundle.

"What signs" is the CA's ``signer_serial``: the active root, or the intermediate when the CA signs
with one (multi-host, mtls/intermediate.py). A certificate never outlives its intermediate, so one
issued near the intermediate's end is cut short; re-issuing it at half-life would only buy another,
shorter one from the same intermediate, so that waits for a renewed intermediate instead.

That order is what makes a root rotation drop no handshake: every sidecar trusts the pending root
before the commit, and keeps trusting the old one (retiring) until certificates it signed are gone.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

from meshns.mtls.ca import CAError, CertAuthority, key_pem, new_key
from meshns.mtls.identity import IdentityError, SpiffeId
from meshns.mtls.rotation import rotation_due
from meshns.mtls.tls import WorkloadTls

log = logging.getLogger("meshns.mtls.keeper")


class TickAction(enum.Enum):
    KEEP = "keep"
    REBUNDLE = "rebundle"
    REISSUE = "reissue"


def decide_tick(*, now: float, issued_at: float, not_after: float, signer: str, active: str,
                sent_generation: int, generation: int, signer_not_after: float = math.inf) -> TickAction:
    """Pure: what the keeper does on a tick, given the certificate it last sent and the CA's state.
    ``active`` is what signs now, ``signer_not_after`` the latest end it can give a certificate."""
    if signer != active:
        return TickAction.REISSUE
    if rotation_due(issued_at, not_after, now) and not_after < signer_not_after:
        return TickAction.REISSUE
    if generation != sent_generation:
        return TickAction.REBUNDLE
    return TickAction.KEEP


class IdentityKeeper:
    def __init__(self, ca_dir: Path, spiffe: SpiffeId, ttl_s: float | None,
                 clock: Callable[[], float] = time.time) -> None:
        self._ca_dir = Path(ca_dir)
        self._spiffe = spiffe
        self._ttl_s = ttl_s
        self._clock = clock
        self._ca: CertAuthority | None = None
        self._current: WorkloadTls | None = None
        self._signer = ""  # serial of the root or intermediate that signed the current certificate
        self._sent_generation = 0  # CA generation the current bundle was read at

    @property
    def generation(self) -> int:
        """The CA generation of the bundle last handed out (0 before the first). `meshns ca rotate`
        waits for every pod to reach the generation of its rotate_begin before it commits."""
        return self._sent_generation

    def current(self) -> WorkloadTls:
        if self._current is None:
            return self._issue(self._clock())
        return self._current

    def tick(self) -> WorkloadTls | None:
        """A new WorkloadTls to send to the sidecar, or None when the current one still stands."""
        now = self._clock()
        if self._current is None:
            return self._issue(now)
        ca = self._authority()
        ca.refresh()
        if any(r.retire_at is not None and now >= r.retire_at for r in ca.roots):
            try:
                ca.prune(now)
            except CAError as exc:  # cleanup only: expired roots are left out of bundles anyway
                log.warning("could not prune retired roots: %s", exc)
        cur = self._current
        action = decide_tick(now=now, issued_at=cur.issued_at, not_after=cur.not_after, signer=self._signer,
                             active=ca.signer_serial, sent_generation=self._sent_generation,
                             generation=ca.generation, signer_not_after=ca.signer_not_after)
        if action is TickAction.REISSUE:
            return self._issue(now)
        if action is TickAction.REBUNDLE:
            bundle = ca.bundle_pem(now)
            self._sent_generation = ca.generation
            self._current = dataclasses.replace(cur, bundle_pem=bundle)
            return self._current
        return None

    def _authority(self) -> CertAuthority:
        if self._ca is None:
            ca = CertAuthority.ensure(self._ca_dir, self._spiffe.trust_domain)
            if ca.trust_domain != self._spiffe.trust_domain:
                raise IdentityError(f"{self._spiffe.uri} is not in the CA's trust domain {ca.trust_domain!r}")
            self._ca = ca
        return self._ca

    def _issue(self, now: float) -> WorkloadTls:
        ca = self._authority()
        key = new_key()
        cert = ca.issue(self._spiffe, key.public_key(), self._ttl_s, now)
        # issue() read the CA state it signed under; remember the signer from that state. The bundle
        # is read after it, so it is at least as new; if the root set moved in between, the next tick
        # sees a signer that is no longer active (or a newer generation) and acts on it.
        self._signer = ca.signer_serial
        if cert.not_after >= ca.signer_not_after:
            log.warning("%s: certificate cut short at its intermediate's end (%s); the intermediate needs renewing",
                        self._spiffe.uri, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(cert.not_after)))
        bundle = ca.bundle_pem(now)
        self._sent_generation = ca.generation
        self._current = WorkloadTls(identity=self._spiffe.uri, cert_pem=cert.cert_pem, key_pem=key_pem(key),
                                    bundle_pem=bundle, serial=cert.serial, not_before=cert.not_before,
                                    not_after=cert.not_after, issued_at=cert.issued_at)
        return self._current
