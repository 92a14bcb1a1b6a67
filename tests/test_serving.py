"""The socket `opcore serve` binds itself: its connections must get TCP_NODELAY, as uvicorn's own do.

Without it each keep-alive answer waited on Nagle's algorithm and the ingress fell from about
2,300 to 350 events a second (bench/pipeline.py, 2026-12-01); asyncio sets the option only on
sockets that say they are TCP.
"""

from __future__ import annotations

import asyncio
import socket

from opcore_hooks.serving import listen


def test_connections_to_the_served_socket_are_not_delayed_by_nagle():
    async def nodelay_of_a_connection() -> int:
        found: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        class Record(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                sock = transport.get_extra_info("socket")
                found.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

        server = await asyncio.get_running_loop().create_server(Record, sock=listen("127.0.0.1", 0))
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            return await asyncio.wait_for(found, 5)
        finally:
            writer.close()
            server.close()

    assert asyncio.run(nodelay_of_a_connection()) == 1
