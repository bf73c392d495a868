"""A websocket client (the `websockets` library): sends each argument, prints each echo."""

import sys

from websockets.sync.client import connect

with connect(sys.argv[1], open_timeout=10) as ws:
    for text in sys.argv[2:]:
        ws.send(text)
        print(ws.recv(timeout=10))
