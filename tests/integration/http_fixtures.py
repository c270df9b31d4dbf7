"""A real HTTP server on loopback standing in for a service (Prometheus) that answers what a
test tells it to: the handler's :meth:`JsonHandler.answer` writes one JSON (or raw) body."""

from __future__ import annotations

import http.server
import json
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["JsonHandler", "serving"]


class JsonHandler(http.server.BaseHTTPRequestHandler):
    """Subclass and implement ``do_GET`` with :meth:`answer`; requests are not logged."""

    def answer(self, status: int, body: Any) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def serving(handler: type[JsonHandler], *, tls: ssl.SSLContext | None = None,
            **attributes: Any) -> Iterator[http.server.ThreadingHTTPServer]:
    """The server on a free loopback port (https with ``tls``), serving in a thread;
    ``attributes`` are set on it for the handler to read (``self.server.<name>``)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    for name, value in attributes.items():
        setattr(server, name, value)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
