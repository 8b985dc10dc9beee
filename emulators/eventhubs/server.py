"""The asyncio server: accept connections, sweep retention, stop cleanly.

Everything runs on one event-loop thread; the broker is not thread-safe and
does not need to be.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from pathlib import Path

from emulators.eventhubs.broker import Broker
from emulators.eventhubs.config import NamespaceConfig
from emulators.eventhubs.connection import Connection

logger = logging.getLogger(__name__)

RETENTION_SWEEP_SECONDS = 1.0


class Server:
    """An Event Hubs namespace served over AMQP on ``host:port``."""

    def __init__(self, namespace: NamespaceConfig, *, host: str, port: int, data_dir: Path | None = None) -> None:
        self.broker = Broker(namespace, data_dir)
        self.host = host
        self.port = port
        self.container_id = f"sluice-eventhubs-{uuid.uuid4().hex[:8]}"
        self.connections: set[Connection] = set()
        self._server: asyncio.base_events.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> tuple[str, int]:
        """Listen; returns the bound address (the real port when ``port`` was 0)."""
        self._server = await asyncio.get_running_loop().create_server(
            self._connection, self.host, self.port, reuse_address=True,
        )
        sock = self._server.sockets[0]
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        host, port = sock.getsockname()[:2]
        self._sweeper = asyncio.create_task(self._sweep(), name="retention-sweep")
        return host, port

    def _connection(self) -> Connection:
        connection = Connection(self.broker, self.container_id, self.connections.discard)
        self.connections.add(connection)
        return connection

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(RETENTION_SWEEP_SECONDS)
            self.broker.expire()

    async def stop(self) -> None:
        """Stop accepting, close every connection with connection:forced, close the logs."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.shutdown()
        if self._server is not None:
            await self._server.wait_closed()
        self.broker.close()
        logger.info("stopped")
