"""The bookkeeping of one request's tries, shared by the HTTP/1.1 and HTTP/2 flows.

The decisions themselves are pure (``retry.should_retry``, ``outlier``); this mixin keeps the
counters they feed on consistent: a retry holds a place in the service's retry budget from the
decision until the retry's response or failure (``decide_retry`` / ``release_retry``), every
try's outcome is recorded for outlier detection, the least-request count of the endpoint tried
is given back (``end_try``), and a request whose tries are exhausted gets the local answer Envoy
gives (``fail``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from meshns.dataplane.policy import flags
from meshns.dataplane.policy.outlier import is_failure
from meshns.dataplane.policy.retry import Outcome, backoff_s, request_replayable, should_retry
from meshns.dataplane.policy.state import ServiceState, choose_endpoint
from meshns.snapshot import HttpRoute, Service

log = logging.getLogger("meshns.dataplane.policy")


class Attempts:
    service: Service
    state: ServiceState
    route: HttpRoute | None
    tries: int
    retrying: bool
    try_ip: str | None
    replay: list[bytes] | None
    replay_size: int
    committed: bool

    endpoint_pod: str
    upstream_host: str
    rand: Callable[[], float]
    try_future: asyncio.Future[Outcome | None] | None

    def method_name(self) -> str:
        raise NotImplementedError

    def dst_port(self) -> int:
        """The service port the client dialled (mapped to the endpoints' target port)."""
        raise NotImplementedError

    def prefer_ip(self) -> str | None:
        """An endpoint the first try should prefer (a connection already dialled there)."""
        return None

    async def one_try(self, key: tuple[str, int], route: HttpRoute) -> Outcome | None:
        """One try on ``key``: its outcome, or None once the response is committed (or the
        request was answered otherwise)."""
        raise NotImplementedError

    def abandon_try(self) -> None:
        """Let go of the try's upstream: its response is no longer wanted."""
        raise NotImplementedError

    def running_loop(self) -> asyncio.AbstractEventLoop:
        """The event loop (a flow that knows it already saves get_running_loop's getpid())."""
        return asyncio.get_running_loop()

    def new_try(self) -> asyncio.Future[Outcome | None]:
        """The future the response callbacks settle with the try's outcome (None: committed)."""
        fut: asyncio.Future[Outcome | None] = self.running_loop().create_future()
        self.try_future = fut
        return fut

    async def try_outcome(self, fut: asyncio.Future[Outcome | None], route: HttpRoute) -> Outcome | None:
        """Wait for the attached try under the route's per-try timeout."""
        per_try = route.retries.per_try_timeout_s
        handle = asyncio.get_running_loop().call_later(per_try, self.try_timed_out, fut) if per_try else None
        try:
            return await fut
        except asyncio.CancelledError:
            if not self.committed:
                self.abandon_try()
            raise
        finally:
            if handle is not None:
                handle.cancel()
            self.try_future = None

    def try_timed_out(self, fut: asyncio.Future[Outcome | None]) -> None:
        if not fut.done() and not self.committed:
            self.abandon_try()
            fut.set_result(Outcome.timeout())

    async def tries_loop(self, route: HttpRoute, subset: str | None, tried: set[str] | None = None,
                         key: tuple[str, int] | None = None, last: Outcome | None = None) -> None:
        """The tries, from the first; or resumed by a flow that began synchronously: ``key`` is a
        try already begun (``begin_try``) that still needs its connection, ``last`` the outcome
        of one already made (its bookkeeping done by ``after_outcome``), ``tried`` their endpoints."""
        service, state, rand = self.service, self.state, self.rand
        loop = asyncio.get_running_loop()
        port = service.target_port(self.dst_port())
        if tried is None:
            tried = set()
        if last is not None:
            await asyncio.sleep(backoff_s(self.tries, rand()))
        while True:
            if key is None:
                prefer = self.prefer_ip() if not tried else None
                ep = choose_endpoint(service, state, subset, tried, loop.time(), rand, prefer)
                if ep is None or port is None:
                    self.fail(last, flags.UH)
                    return
                key = self.begin_try(ep.ip, ep.pod, port, tried)
            outcome = await self.one_try(key, route)
            if outcome is None:
                return  # committed: the response streams in callbacks; the try ends with it
            ip, key = key[0], None
            last = outcome
            if not self.after_outcome(ip, outcome):
                return
            await asyncio.sleep(backoff_s(self.tries, rand()))

    def begin_try(self, ip: str, pod: str, port: int, tried: set[str]) -> tuple[str, int]:
        """Count a try to endpoint ``ip`` (least-request load, attempts) and name it for the
        metrics and the access log."""
        self.tries += 1
        tried.add(ip)
        self.state.try_started(ip)
        self.try_ip = ip
        self.endpoint_pod = pod
        self.upstream_host = f"{ip}:{port}"
        return ip, port

    def after_outcome(self, ip: str, outcome: Outcome) -> bool:
        """A try ended without a committed response: whether another try follows (else the
        client was answered)."""
        self.end_try()
        if outcome.kind != "status":  # statuses were recorded and decided in the head callback
            self.record(ip, outcome)
            if outcome.kind == "timeout":
                self.state.timeouts += 1
            if not self.decide_retry(outcome):
                self.fail(outcome, "")
                return False
        return True

    def local_failure(self, status: int, flag: str) -> None:
        """Answer the client with ``status`` and ``flag`` (each protocol's own local reply)."""
        raise NotImplementedError

    def decide_retry(self, outcome: Outcome) -> bool:
        """Whether to try again; a yes holds a place in the retry budget until the retry ends
        (from the decision, through the backoff, to the retry's response head or failure)."""
        self.release_retry()
        if not self.retry_wanted(outcome):
            return False
        self.retrying = True
        self.state.active_retries += 1
        self.state.retries += 1
        return True

    def release_retry(self) -> None:
        if self.retrying:
            self.retrying = False
            self.state.active_retries -= 1

    def retry_wanted(self, outcome: Outcome) -> bool:
        route, state = self.route, self.state
        assert route is not None
        kept = self.replay_size if self.replay is not None else None
        replayable = request_replayable(self.method_name(), kept)
        if not should_retry(route.retries, outcome, self.tries, replayable, self.committed, True):
            return False
        if not state.budget_ok():
            state.budget_exhausted += 1  # a retry was due but the budget said no: a storm averted
            return False
        return True

    def record(self, ip: str, outcome: Outcome) -> None:
        st = self.state
        if st.outlier.record(ip, is_failure(outcome), self.running_loop().time(),
                             len(self.service.endpoints)):
            st.ejections += 1
            log.info("ejected %s from %s", ip, self.service.name)

    def end_try(self) -> None:
        if self.try_ip is not None:
            self.state.try_ended(self.try_ip)
            self.try_ip = None

    def fail(self, last: Outcome | None, default_flag: str) -> None:
        if last is None:
            self.local_failure(503, default_flag or flags.UH)
        elif last.kind == "timeout":
            self.local_failure(504, flags.UT)  # as Envoy: the last try timed out, whatever came before
        elif last.kind == "protocol_error":
            # Envoy answers an upstream protocol error with 502 (since 1.18), retried or not.
            self.local_failure(502, flags.URX if self.tries > 1 else flags.UPE)
        elif self.tries > 1:
            self.local_failure(503, flags.URX)
        elif last.kind == "reset":
            self.local_failure(503, flags.UC)
        else:
            self.local_failure(503, flags.UF)
