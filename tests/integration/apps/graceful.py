"""An HTTP server that shuts down gracefully: on SIGTERM it stops accepting new connections,
finishes the requests in flight, then exits 0. GET /sleep/<s> answers after s seconds."""

from __future__ import annotations

import argparse
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        parts = self.path.strip("/").split("/")
        if parts[0] == "sleep":
            time.sleep(float(parts[1]))
        body = b"done\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8080)
    args = ap.parse_args()
    server = ThreadingHTTPServer(("0.0.0.0", args.port), Handler)
    server.daemon_threads = False  # server_close() joins the request threads: in-flight work finishes
    server.block_on_close = True
    # shutdown() must not run in the thread that runs serve_forever (it would wait for itself).
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever()
    server.server_close()  # stop accepting, then wait for the requests in flight


if __name__ == "__main__":
    main()
