"""decode_sockaddr_in on hand-built bytes, and the resolvers against fake sockets."""

from __future__ import annotations

import contextlib
import errno
import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshns.dataplane.addrs import OrigDst
from meshns.dataplane.origdst import (
    SO_ORIGINAL_DST,
    SOL_IP,
    FixedResolver,
    OrigDstError,
    SockoptResolver,
    decode_sockaddr_in,
    encode_sockaddr_in,
)

AF_INET_LE = b"\x02\x00"  # family is host order (little-endian on x86_64 and arm64)


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        (AF_INET_LE + b"\x23\x28" + bytes([10, 252, 0, 1]) + bytes(8), OrigDst("10.252.0.1", 9000)),
        (AF_INET_LE + b"\x00\x50" + bytes([127, 0, 0, 1]) + bytes(8), OrigDst("127.0.0.1", 80)),
        (AF_INET_LE + b"\x3a\x9a" + bytes([10, 252, 7, 5]) + bytes(8), OrigDst("10.252.7.5", 15002)),
        (AF_INET_LE + b"\xff\xff" + bytes([255] * 4) + bytes(8), OrigDst("255.255.255.255", 65535)),
        (AF_INET_LE + b"\x00\x00" + bytes(4) + bytes(8), OrigDst("0.0.0.0", 0)),
        # padding is not ours to judge
        (AF_INET_LE + b"\x01\xbb" + bytes([1, 2, 3, 4]) + b"garbage!", OrigDst("1.2.3.4", 443)),
    ],
)
def test_decode_table(raw: bytes, want: OrigDst) -> None:
    assert decode_sockaddr_in(raw) == want


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "must be 16 bytes, got 0"),
        (AF_INET_LE + b"\x23\x28" + bytes([10, 0, 0, 1]), "got 8"),
        (AF_INET_LE + b"\x23\x28" + bytes([10, 0, 0, 1]) + bytes(7), "got 15"),
        (AF_INET_LE + b"\x23\x28" + bytes([10, 0, 0, 1]) + bytes(9), "got 17"),
        (b"\x0a\x00" + b"\x23\x28" + bytes(12), "family 10 is not AF_INET"),  # AF_INET6
        (b"\x00\x02" + b"\x23\x28" + bytes(12), "is not AF_INET"),  # family in the wrong byte order
    ],
)
def test_decode_rejects_bad_input(raw: bytes, message: str) -> None:
    with pytest.raises(OrigDstError, match=message):
        decode_sockaddr_in(raw)


@given(ip=st.ip_addresses(v=4).map(str), port=st.integers(0, 65535))
def test_encode_decode_round_trip(ip: str, port: int) -> None:
    assert decode_sockaddr_in(encode_sockaddr_in(OrigDst(ip, port))) == OrigDst(ip, port)


@given(ip=st.ip_addresses(v=4).map(str), port=st.integers(0, 65535))
def test_decode_matches_the_kernel_layout(ip: str, port: int) -> None:
    # Independent encoder: struct sockaddr_in as the C ABI lays it out on this host.
    raw = struct.pack("@H", socket.AF_INET) + struct.pack("!H", port) + socket.inet_aton(ip) + bytes(8)
    assert decode_sockaddr_in(raw) == OrigDst(ip, port)


@given(st.binary(max_size=32))
def test_decode_never_raises_anything_else(raw: bytes) -> None:
    with contextlib.suppress(OrigDstError):
        decode_sockaddr_in(raw)


class FakeSock:
    def __init__(self, answer: bytes | OSError, sockname: object = ("127.0.0.1", 15001)) -> None:
        self.answer = answer
        self.sockname = sockname
        self.asked: list[tuple[int, int, int]] = []

    def getsockopt(self, level: int, optname: int, buflen: int, /) -> bytes:
        self.asked.append((level, optname, buflen))
        if isinstance(self.answer, OSError):
            raise self.answer
        return self.answer

    def getsockname(self) -> object:
        return self.sockname


def test_sockopt_resolver_asks_so_original_dst() -> None:
    sock = FakeSock(encode_sockaddr_in(OrigDst("10.252.0.1", 9000)))
    assert SockoptResolver().resolve(sock) == OrigDst("10.252.0.1", 9000)
    assert sock.asked == [(SOL_IP, SO_ORIGINAL_DST, 16)]
    assert (SOL_IP, SO_ORIGINAL_DST) == (0, 80)


def test_sockopt_resolver_falls_back_to_local_address_when_not_natted() -> None:
    sock = FakeSock(OSError(errno.ENOENT, "No such file or directory"), ("127.0.0.1", 15001))
    assert SockoptResolver().resolve(sock) == OrigDst("127.0.0.1", 15001)


def test_sockopt_resolver_maps_other_errors() -> None:
    with pytest.raises(OrigDstError, match="SO_ORIGINAL_DST failed"):
        SockoptResolver().resolve(FakeSock(OSError(errno.ENOPROTOOPT, "Protocol not available")))


def test_sockopt_resolver_on_a_real_unnatted_socket() -> None:
    # A plain loopback connection has no NAT: ENOENT (or the unchanged destination if conntrack
    # tracks it), so the answer is where the client connected.
    with socket.create_server(("127.0.0.1", 0)) as srv:
        client = socket.create_connection(srv.getsockname())
        accepted, _ = srv.accept()
        try:
            assert SockoptResolver().resolve(accepted) == OrigDst(*srv.getsockname())
        finally:
            accepted.close()
            client.close()


def test_fixed_resolver() -> None:
    dst = OrigDst("127.0.0.1", 1234)
    assert FixedResolver(dst).resolve(FakeSock(b"")) is dst
