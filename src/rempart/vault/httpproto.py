"""The vault's HTTP/1.1 protocol for uvicorn: uvicorn's httptools protocol, with request bodies
handed on without being copied twice more.

uvicorn appends every piece of a request body to a fresh ``bytearray`` and then gives the
application ``bytes(that bytearray)``: two more copies of every byte of a 16 MiB pack, into
freshly allocated memory each time (page faults, heap growth and trimming). That was about a
fifth of the vault's CPU during a backup. Here a piece that arrives while nothing is waiting
(the usual case: uvicorn pauses reading after each piece of more than 64 KiB until the
application has taken it) is kept as the ``bytes`` object the parser made, and uvicorn's
``bytes(body)`` of a ``bytes`` object is that same object. Anything else (a piece arriving
while another waits, a response already sent, an upgrade) goes through uvicorn's own code.
"""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def http_protocol() -> Any:
    """What to pass as uvicorn's ``http`` option: this protocol class, or ``"auto"`` when
    httptools (and so uvicorn's protocol it builds on) is not installed."""
    try:
        from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # pragma: no cover - httptools is a dependency of uvicorn[standard]
        return "auto"

    class VaultHttpProtocol(HttpToolsProtocol):  # type: ignore[misc]
        def on_body(self, body: bytes) -> None:
            cycle = self.cycle
            if cycle.body or cycle.response_complete or self.parser.should_upgrade():
                super().on_body(body)  # as uvicorn does it (bytes += bytes is a copy, still right)
                return
            cycle.body = body  # type: ignore[assignment]  # receive() sends bytes(body): this very object
            if len(body) > HIGH_WATER_LIMIT:
                self.flow.pause_reading()
            cycle.message_event.set()

    return VaultHttpProtocol
