"""A backend that speaks HTTP/1.1 and HTTP/2 (prior knowledge) on one port, run unmodified inside a
pod as its app. Every answer says who answered, over which protocol, and whether the request
carried an Upgrade header:  "<name> <HTTP/1.1|HTTP/2> upgrade=<value or ->".

  dual.py --port P --name NAME
"""

from __future__ import annotations

import argparse
import asyncio

import h2.config
import h2.connection
import h2.events
import h11

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


async def serve_h1(name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bytes) -> None:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(first)
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(65536)
            conn.receive_data(data)
            if not data:
                return
            continue
        if isinstance(event, h11.Request):
            upgrade = dict(event.headers).get(b"upgrade", b"-").decode()
            body = f"{name} HTTP/1.1 upgrade={upgrade}\n".encode()
            writer.write(conn.send(h11.Response(status_code=200, headers=[("content-length", str(len(body)))])))
            writer.write(conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
            await writer.drain()
        elif isinstance(event, h11.EndOfMessage):
            if conn.our_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()
        elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
            return


async def serve_h2(name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bytes) -> None:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    conn.initiate_connection()
    data = first
    while data:
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                upgrade = dict(event.headers).get(b"upgrade", b"-").decode()
                body = f"{name} HTTP/2 upgrade={upgrade}\n".encode()
                conn.send_headers(event.stream_id, [(b":status", b"200"), (b"content-length", str(len(body)).encode())])
                conn.send_data(event.stream_id, body, end_stream=True)
            elif isinstance(event, h2.events.DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        writer.write(conn.data_to_send())
        await writer.drain()
        data = await reader.read(65536)


async def handle(name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        first = b""
        while len(first) < len(PREFACE) and PREFACE.startswith(first):
            chunk = await reader.read(65536)
            if not chunk:
                return
            first += chunk
        if first.startswith(PREFACE):
            await serve_h2(name, reader, writer, first)
        else:
            await serve_h1(name, reader, writer, first)
    except (ConnectionError, h11.ProtocolError, h2.exceptions.ProtocolError):
        pass
    finally:
        writer.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", required=True)
    args = parser.parse_args()
    server = await asyncio.start_server(lambda r, w: handle(args.name, r, w), "0.0.0.0", args.port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
