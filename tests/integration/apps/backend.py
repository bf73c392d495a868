"""A small HTTP/1.1 backend for integration tests, run unmodified inside a pod as its app.

It can be told to fail, hang or slow down (POST /mode/...), and it counts what it served, so a
test can see through the mesh what reached each endpoint. Standard library only.

  GET  /whoami            -> the backend's name
  GET  /status/<code>     -> that status
  GET  /sleep/<seconds>   -> answers after a delay
  GET  /bytes/<n>         -> n bytes, streamed (Content-Length)
  GET  /chunked/<n>       -> n bytes, chunked: 64 KiB chunks with an extension, then a trailer
  POST /upload            -> "<length> <sha256>" of the body (Content-Length or chunked)
  GET  /headers           -> the request headers as received, one per line
  POST /mode/ok|fail|hang|slow-<s>|die   (fail: 503 to everything else; die: exit at once)
  GET  /count             -> requests served other than /count and /mode
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STATE = {"mode": "ok", "count": 0}
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "meshns-test-backend"
    name = "backend"

    def log_message(self, fmt: str, *args: object) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        # http.server writes the head and the body separately; with Nagle on, a keep-alive client
        # waits for its delayed ACK (40 ms) on every response. Real servers set TCP_NODELAY.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def reply(self, code: int, body: bytes, ctype: str = "text/plain") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Backend", self.name)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def control(self) -> bool:
        path = self.path
        if path.startswith("/mode/"):
            mode = path[len("/mode/"):]
            if mode == "die":
                os._exit(1)
            STATE["mode"] = mode
            self.reply(200, f"mode {mode}\n".encode())
            return True
        if path == "/count":
            self.reply(200, str(STATE["count"]).encode())
            return True
        return False

    def apply_mode(self) -> bool:
        with LOCK:
            STATE["count"] += 1
        mode = STATE["mode"]
        if mode == "fail":
            self.drain_body()
            self.reply(503, b"failing on purpose\n")
            return True
        if mode == "hang":
            time.sleep(3600)
        if mode.startswith("slow-"):
            time.sleep(float(mode[5:]))
        return False

    def drain_body(self) -> tuple[int, str]:
        digest, total = hashlib.sha256(), 0
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                left = size
                while left:
                    chunk = self.rfile.read(min(left, 1 << 20))
                    digest.update(chunk)
                    left -= len(chunk)
                    total += len(chunk)
                self.rfile.readline()
        else:
            left = int(self.headers.get("Content-Length") or 0)
            while left:
                chunk = self.rfile.read(min(left, 1 << 20))
                if not chunk:
                    break
                digest.update(chunk)
                left -= len(chunk)
                total += len(chunk)
        return total, digest.hexdigest()

    def do_GET(self) -> None:
        if self.control() or self.apply_mode():
            return
        parts = self.path.split("?")[0].strip("/").split("/")
        if parts[0] == "whoami":
            self.reply(200, self.name.encode())
        elif parts[0] == "status":
            self.reply(int(parts[1]), f"status {parts[1]} from {self.name}\n".encode())
        elif parts[0] == "sleep":
            time.sleep(float(parts[1]))
            self.reply(200, self.name.encode())
        elif parts[0] == "headers":
            self.reply(200, "".join(f"{k}: {v}\n" for k, v in self.headers.raw_items()).encode())
        elif parts[0] == "bytes":
            n = int(parts[1])
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.send_header("X-Backend", self.name)
            self.end_headers()
            block = b"m" * (1 << 20)
            while n:
                k = min(n, len(block))
                self.wfile.write(block[:k])
                n -= k
        elif parts[0] == "chunked":
            n = int(parts[1])
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("X-Backend", self.name)
            self.end_headers()
            block = b"c" * (1 << 16)
            while n:
                k = min(n, len(block))
                self.wfile.write(b"%x;part=1\r\n%s\r\n" % (k, block[:k]))
                n -= k
            self.wfile.write(b"0\r\nX-Sum: done\r\n\r\n")
        else:
            self.reply(404, b"not found\n")

    do_HEAD = do_GET

    def do_POST(self) -> None:
        if self.control():
            return
        if self.apply_mode():
            return
        total, digest = self.drain_body()
        self.reply(200, f"{total} {digest}".encode())

    do_PUT = do_POST


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--port", type=int, default=9080)
    args = ap.parse_args()
    Handler.name = args.name
    # socketserver's default backlog is 5: a burst of new connections would overflow the accept
    # queue and the kernel would drop SYNs silently (each retried after 1, 3, 7... s).
    ThreadingHTTPServer.request_queue_size = 1024
    server = ThreadingHTTPServer(("0.0.0.0", args.port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
