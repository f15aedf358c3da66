"""A direct ASGI path for the hot object routes: ``GET``, ``HEAD`` and ``POST`` of
``/v1/p/{practice}/{data|index|snapshots}/{64 hex}`` (the ranged reads of a restore and the pack
uploads of a backup).

Through FastAPI each of these requests crossed about a dozen middleware layers (error, telemetry,
body-limit, exception, exit-stack wrappers), Starlette's route table (every admin, watch and
dashboard route matched in turn), path-parameter validation and the dependency machinery, and
every chunk of an upload body crossed the same receive wrappers: about a millisecond of vault
CPU per request whatever its size.

Here a request whose method and path match exactly that shape is answered by the same
functions the FastAPI routes use (:func:`rempart.vault.routes_objects.serve_object` and
:func:`~rempart.vault.routes_objects.upload`), so authentication (token, scope, practice
isolation, failure rate limit), create-only ingestion (SHA-256 name check, parsing, quota, the
maximum request size), audit of refusals and the metrics are the same code. Only the plumbing
differs: ``scope["route"]`` is set to the FastAPI route the request would have matched, so audit
actions and the request counter's ``route`` label are identical; a :class:`RempartError`
becomes the same JSON answer as through the app's exception handler. Anything else (another
method, a path that does not match, e.g. an invalid name, which FastAPI answers with 422) goes
to FastAPI unchanged. An unexpected exception propagates to uvicorn (500, logged), as an
unhandled one did through FastAPI; an upload cut off by the client ends quietly (nothing stored).
"""

from __future__ import annotations

import re
from typing import Any

from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from rempart.core.errors import RempartError
from rempart.storage.base import FileType, Handle

OBJECT_ROUTE = "/v1/p/{practice}/{type}/{name}"
SLICE = 256 * 1024
_OBJECT = re.compile(r"/v1/p/([a-z0-9][a-z0-9-]{0,62})/(data|index|snapshots)/([0-9a-f]{64})")


class FastObjects:
    """``await fast(scope, receive, send)`` answers a hot object request and returns True, or
    returns False without touching anything (the caller passes the request to FastAPI)."""

    def __init__(self, app: Any) -> None:
        from rempart.vault.routes_objects import router

        self.app = app
        #: requests answered here (tests check that the hot routes do come this way)
        self.handled = 0
        self.routes: dict[str, APIRoute] = {}
        for r in router.routes:  # the router create_app includes (without a further prefix)
            if isinstance(r, APIRoute) and r.path == OBJECT_ROUTE:
                for m in r.methods or ():
                    if m in ("GET", "HEAD", "POST"):
                        self.routes[m] = r
        if set(self.routes) != {"GET", "HEAD", "POST"}:
            raise RuntimeError(f"the object routes are not all registered ({sorted(self.routes)})")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> bool:
        method = scope["method"]
        route = self.routes.get(method)
        if route is None:
            return False
        m = _OBJECT.fullmatch(scope["path"])
        if m is None:
            return False
        from rempart.vault.app import error_response
        from rempart.vault.routes_objects import READ, WRITE, serve_object, upload

        practice, ftype, name = m.groups()
        scope["app"] = self.app
        scope["route"] = route
        scope["path_params"] = {"practice": practice, "type": ftype, "name": name}
        request = Request(scope, receive)
        h = Handle(FileType(ftype), name)
        response: Response
        try:
            if method == "POST":
                # authenticated before a byte of the body is read, as the FastAPI dependency did
                auth = await run_in_threadpool(_require, request, practice, WRITE)
                response = await upload(request, auth, h)
            else:
                # authentication and the read in ONE worker-thread hop
                response = await run_in_threadpool(
                    lambda: serve_object(request, _require(request, practice, READ), h, head=method == "HEAD"))
        except RempartError as exc:
            response = error_response(exc)
        except ClientDisconnect:  # the upload was cut off: nothing was stored, nobody to answer
            return True
        self.handled += 1
        body = response.body
        if len(body) <= SLICE:
            await response(scope, receive, send)
        else:
            # a large body (a run of blobs, up to a few MiB) goes out in slices: each is encrypted
            # and written while it is still in the CPU cache (a 4 MiB body went through TLS and
            # the write buffers in one piece, several passes over memory)
            await send({"type": "http.response.start", "status": response.status_code,
                        "headers": response.raw_headers})
            view = memoryview(body)
            for i in range(0, len(body), SLICE):
                await send({"type": "http.response.body", "body": view[i : i + SLICE],
                            "more_body": i + SLICE < len(body)})
        self.app.state.metrics.requests.labels(method, route.path, str(response.status_code)).inc()
        return True


def _require(request: Request, practice: str, scopes: tuple[str, ...]) -> Any:
    from rempart.vault.deps import require_practice

    return require_practice(request, practice, scopes, True)
