"""A websocket echo server (the `websockets` library), run unmodified inside a pod."""

import sys

from websockets.sync.server import ServerConnection, serve


def echo(ws: ServerConnection) -> None:
    for message in ws:
        ws.send(message)


with serve(echo, "0.0.0.0", int(sys.argv[1])) as server:
    server.serve_forever()
