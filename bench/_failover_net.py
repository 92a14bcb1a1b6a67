"""The failover run's network: TCP proxies on loopback that the harness can switch, stall and sever.

Two kinds of proxy, one implementation:

- the *moving endpoint*: what opcore's ``OPCORE_REDIS_URL`` names. It forwards to the current
  primary; ``switch`` closes every client connection at once and forwards new ones to the new
  target, as a managed Redis's DNS name (or its front proxy) does after a failover;
- a *replication link*: each replica reaches its primary through one, so the harness can
  ``stall`` it (stop moving bytes both ways, without closing: the replica lags while nobody
  notices) and ``sever`` it (close both ends and throw away what was held, so a crash during a
  stall really loses what the replica never received).

The proxies run in a process of their own (``python bench/_failover_net.py --control PORT``),
not in the harness's threads: the harness's sender already keeps one core busy, and a proxy
that waits for the GIL would add latency to every Redis command opcore sends and blur what is
measured. The harness drives it with one-line commands on a control port (``Net``).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._chaos_procs import Proc, process_env  # noqa: E402
from bench._servers import free_port, wait_port  # noqa: E402


@dataclass(eq=False)  # hashed by identity: kept in a set
class _Pair:
    """One proxied connection: the client's side, the target's side, and whether it is finished."""

    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    dead: bool = False

    def abort(self) -> None:
        """Close both ends at once (a reset, no flush): held or buffered bytes are never delivered."""
        self.dead = True
        for w in self.writers:
            w.transport.abort()


class Proxy:
    """Forwards every connection on ``port`` to ``target``; switchable, stallable, severable."""

    def __init__(self, name: str, port: int, target: tuple[str, int]) -> None:
        self.name, self.port, self.target = name, port, target
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.pairs: set[_Pair] = set()
        self.forwarded = 0  # bytes moved, both ways
        self.refused = 0  # client connections closed because the target did not answer
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pair = _Pair(writers=[writer])
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(*self.target), 2.0)
        except (OSError, asyncio.TimeoutError):
            self.refused += 1
            writer.transport.abort()
            return
        pair.writers.append(up_writer)
        self.pairs.add(pair)
        await asyncio.gather(self._pump(reader, up_writer, pair), self._pump(up_reader, writer, pair))
        pair.abort()
        self.pairs.discard(pair)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pair: _Pair) -> None:
        """Move bytes one way. A stall is honoured both before a read (nothing more is taken from
        the kernel) and after it (a chunk read just before the stall is held, not delivered)."""
        try:
            while not pair.dead:
                await self.flowing.wait()
                data = await reader.read(65536)
                if not data:
                    break
                await self.flowing.wait()
                if pair.dead:
                    break
                writer.write(data)
                self.forwarded += len(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            pair.abort()  # either side gone: close the other, as a TCP proxy must

    def switch(self, target: tuple[str, int]) -> int:
        """Point new connections at ``target`` and close every current one; how many were closed."""
        self.target = target
        return self.sever()

    def sever(self) -> int:
        pairs = list(self.pairs)
        for pair in pairs:
            pair.abort()
        self.pairs.clear()
        self.flowing.set()
        return len(pairs)

    def stats(self) -> str:
        return (f"target={self.target[0]}:{self.target[1]} connections={len(self.pairs)} "
                f"flowing={int(self.flowing.is_set())} forwarded={self.forwarded} refused={self.refused}")


class _Server:
    """The control port: ``ADD name port host tport``, ``SWITCH name host port``, ``STALL name``,
    ``RESUME name``, ``SEVER name``, ``REMOVE name``, ``STATS name``; each answered ``OK ...``."""

    def __init__(self) -> None:
        self.proxies: dict[str, Proxy] = {}

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = (await reader.readline()).decode().split()
        try:
            answer = await self.command(line)
        except Exception as exc:  # noqa: BLE001 - a bad command must not end the proxies
            answer = f"ERR {type(exc).__name__}: {exc}"
        writer.write((answer + "\n").encode())
        await writer.drain()
        writer.close()

    async def command(self, words: list[str]) -> str:
        verb, name, *rest = words
        if verb == "ADD":
            proxy = Proxy(name, int(rest[0]), (rest[1], int(rest[2])))
            await proxy.start()
            self.proxies[name] = proxy
            return "OK"
        proxy = self.proxies[name]
        if verb == "SWITCH":
            return f"OK {proxy.switch((rest[0], int(rest[1])))}"
        if verb == "STALL":
            proxy.flowing.clear()
            return "OK"
        if verb == "RESUME":
            proxy.flowing.set()
            return "OK"
        if verb == "SEVER":
            return f"OK {proxy.sever()}"
        if verb == "REMOVE":
            proxy.sever()
            if proxy.server is not None:
                proxy.server.close()
            del self.proxies[name]
            return "OK"
        if verb == "STATS":
            return "OK " + proxy.stats()
        return f"ERR unknown command {verb}"


async def _serve(control_port: int) -> None:
    server = await asyncio.start_server(_Server().handle, "127.0.0.1", control_port, reuse_address=True)
    async with server:
        await server.serve_forever()


class Net:
    """The harness's handle on the proxy process: start it, send it commands, stop it (by pid)."""

    def __init__(self, tmp: Path) -> None:
        self.control_port = free_port()
        self.proc = Proc("net", [sys.executable, str(Path(__file__).resolve()), "--control", str(self.control_port)],
                         process_env({}), tmp / "net.log")

    def start(self) -> None:
        self.proc.start()
        wait_port(self.control_port, 20)

    def send(self, *words: object) -> str:
        """One command; its answer after ``OK`` (raises on ``ERR``)."""
        with socket.create_connection(("127.0.0.1", self.control_port), timeout=10) as s:
            s.sendall((" ".join(str(w) for w in words) + "\n").encode())
            answer = s.makefile().readline().strip()
        if not answer.startswith("OK"):
            raise RuntimeError(f"proxy command {words}: {answer}")
        return answer[2:].strip()

    def add(self, name: str, target_port: int) -> int:
        """A new proxy to 127.0.0.1:``target_port``; the port it listens on."""
        port = free_port()
        self.send("ADD", name, port, "127.0.0.1", target_port)
        wait_port(port, 10)
        return port

    def switch(self, name: str, target_port: int) -> int:
        return int(self.send("SWITCH", name, "127.0.0.1", target_port))

    def stall(self, name: str) -> None:
        self.send("STALL", name)

    def resume(self, name: str) -> None:
        self.send("RESUME", name)

    def sever(self, name: str) -> int:
        return int(self.send("SEVER", name))

    def remove(self, name: str) -> None:
        self.send("REMOVE", name)

    def stats(self, name: str) -> dict[str, str]:
        return dict(kv.split("=", 1) for kv in self.send("STATS", name).split())

    def stop(self) -> None:
        self.proc.stop(5)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="TCP proxies for bench/failover.py, driven on a control port")
    parser.add_argument("--control", type=int, required=True)
    asyncio.run(_serve(parser.parse_args().control))
