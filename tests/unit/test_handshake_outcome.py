"""Which inbound handshake endings are a client giving up, not a failure (dataplane.accept.gave_up)."""

from __future__ import annotations

import ssl

import pytest

from meshns.dataplane.accept import gave_up


@pytest.mark.parametrize(("exc", "answered", "want"), [
    # The client closed (FIN or RST) after our ServerHello: it gave up.
    (ConnectionResetError("connection closed during the TLS handshake"), True, True),
    (ConnectionAbortedError(), True, True),
    (BrokenPipeError(), True, True),
    # Closed before we could answer: a truncated ClientHello, a failure.
    (ConnectionResetError("connection closed during the TLS handshake"), False, False),
    # A stall, or TLS itself refusing (garbage, a missing or foreign certificate): failures.
    (TimeoutError(), True, False),
    (ssl.SSLError(1, "tlsv13 alert certificate required"), True, False),
    (ssl.SSLCertVerificationError(1, "certificate verify failed"), True, False),
    (ssl.SSLEOFError(8, "EOF occurred in violation of protocol"), True, False),
    (OSError(113, "No route to host"), True, False),
])
def test_gave_up(exc: BaseException, answered: bool, want: bool) -> None:
    assert gave_up(exc, answered) is want
