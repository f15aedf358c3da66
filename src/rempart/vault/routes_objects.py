"""Per-practice object routes (restic REST-like): create-only uploads, reads, lists, exists,
run and drill reports, status and timeline."""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import struct
from collections.abc import Callable
from concurrent.futures import Future
from typing import Annotated, Any, cast

from fastapi import APIRouter, Depends, Path, Request, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse

from rempart.core.errors import IntegrityError, PermissionDenied, RempartError, UserError
from rempart.storage.base import FileType, Handle
from rempart.vault import approvals
from rempart.vault import practices as ops
from rempart.vault.deps import refuse, require_practice, vault_of
from rempart.vault.mapped import read_range
from rempart.vault.service import Practice
from rempart.vault.staging import StagedUpload, stage
from rempart.vault.tokens import Principal

router = APIRouter(prefix="/v1/p/{practice}", tags=["practice"])

PracticeName = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$", max_length=63)]
ObjName = Annotated[str, Path(pattern=r"^[0-9a-f]{64}$", min_length=64, max_length=64)]
READ = ("backup", "restore", "admin")
WRITE = ("backup", "admin")
Auth = tuple[Principal, Practice]


def _needs(*scopes: str, cached: bool = False) -> Any:
    """Dependency: authenticate before anything else (body validation included). ``cached``: the
    hot object routes may take the token and practice from the vault's short-lived cache."""

    def dep(request: Request, practice: PracticeName) -> Auth:
        return require_practice(request, practice, scopes, cached)

    return Depends(dep)


ReadAuth = Annotated[Auth, _needs(*READ)]
HotReadAuth = Annotated[Auth, _needs(*READ, cached=True)]
WriteAuth = Annotated[Auth, _needs(*WRITE, cached=True)]
RunAuth = Annotated[Auth, _needs("backup")]
#: a restore drill reads backups back: done with a restore token (or the provider's admin token)
DrillAuth = Annotated[Auth, _needs("restore", "admin")]
AdminAuth = Annotated[Auth, _needs("admin")]
UPLOAD_BODY = {"requestBody": {"required": True, "content": {
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}


class ObjType(str, enum.Enum):
    DATA = "data"
    INDEX = "index"
    SNAPSHOTS = "snapshots"


class RangeNotSatisfiable(UserError):
    """The Range header is invalid or beyond the end of the file."""

    reference = "range-not-satisfiable"


class FileEntry(BaseModel):
    name: str
    size: int


class ExistsRequest(BaseModel):
    ids: list[Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]] = Field(max_length=100_000)


class ExistsResponse(BaseModel):
    present: list[str]


class RunReport(BaseModel):
    outcome: str = Field(pattern=r"^(ok|failed|partial|suspicious)$")
    error_class: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z0-9_.-]*$")
    counts: dict[str, Annotated[int, Field(ge=0)]] = Field(default_factory=dict, max_length=50)


class DrillReport(BaseModel):
    outcome: str = Field(pattern=r"^(ok|failed)$")
    snapshot: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    files: int | None = Field(default=None, ge=0, le=2**62)
    bytes: int | None = Field(default=None, ge=0, le=2**62)
    seconds: float | None = Field(default=None, ge=0, le=10**9)
    error_class: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z0-9_.-]*$")


class Created(BaseModel):
    name: str
    created: bool


async def _receive(request: Request, write: Callable[[bytes], object],
                   wait: Callable[[int], Future[None] | None] | None = None) -> int:
    """Pass the request body to ``write`` chunk by chunk as it streams in (no second pass, no
    spool file written and read back); returns its size. Nothing is stored until the body is
    complete and checked, so a half-finished upload never becomes visible. The ASGI messages
    are read directly (not through ``Request.stream``: one async generator step less per chunk
    of a 16 MiB pack). ``wait(n)``: a write to finish before ``n`` more bytes can be written
    without blocking (a staged upload whose disk is behind); awaited, so the event loop serves
    the other requests meanwhile."""
    limit = request.app.state.config.limits.max_request_bytes
    from rempart.vault.app import RequestTooLarge

    cl = request.headers.get("content-length")
    if cl is not None and (not cl.isdigit() or int(cl) > limit):
        raise RequestTooLarge(f"request body larger than the vault's limit of {limit} bytes")
    size = 0
    receive = request.receive
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise RequestTooLarge(f"request body larger than the vault's limit of {limit} bytes")
            behind = wait(len(chunk)) if wait is not None else None
            if behind is not None:
                await asyncio.wrap_future(behind)
            write(chunk)
        if not message.get("more_body", False):
            return size


async def _receive_bytes(request: Request) -> tuple[bytearray, str]:
    """The whole body in memory and its SHA-256 (objects other than packs, and packs bound for
    S3). Grown by appending, not pre-sized: bytearray(n) zero-fills n bytes first (a 16 MiB
    pack: ~6 ms of CPU for buffer + fill vs ~3 ms appending)."""
    buf = bytearray()
    digest = hashlib.sha256()

    def write(chunk: bytes) -> None:
        buf.extend(chunk)
        digest.update(chunk)

    await _receive(request, write)
    return buf, digest.hexdigest()


def _check_name(h: Handle, sha: str) -> None:
    if h.type is not FileType.CONFIG and not hmac.compare_digest(sha, h.name):
        raise IntegrityError("the body's SHA-256 does not match the file name")


async def upload(request: Request, auth: Auth, h: Handle) -> JSONResponse:
    """Receive, check and store one object (create-only); 201 if created, 200 if the same bytes
    were there already. Used by the FastAPI routes and by :mod:`rempart.vault.fastpath`.

    A pack bound for local storage is written to a temporary file as it arrives (hashed on the
    way; :mod:`rempart.vault.staging`) and becomes the object only once checked; any other
    object is received in memory. Either way a cut-off, refused or failed upload leaves nothing."""
    p, pr = auth
    vault = vault_of(request)
    staged: StagedUpload | None = None
    try:
        if h.type is FileType.DATA:
            staged = await run_in_threadpool(lambda: stage(vault.backend(pr), h))
        data: bytes | StagedUpload
        if staged is not None:
            size = await _receive(request, staged.write, staged.behind)
            sha, data = staged.hexdigest(), staged
        else:
            buf, sha = await _receive_bytes(request)
            # a pack (S3) goes on as the received buffer, without a copy: the vault only parses
            # its header (ids come out as bytes) and writes it; smaller objects as bytes
            data = cast(bytes, buf) if h.type is FileType.DATA else bytes(buf)
            size = len(data)
        _check_name(h, sha)
        created = await run_in_threadpool(vault.ingest, p.actor, pr, h, data)
    except RempartError as exc:
        err = exc
        raise await run_in_threadpool(lambda: refuse(request, err, actor=p.actor, practice=pr.name)) from None
    finally:
        if staged is not None:
            staged.discard()  # nothing left once published; else the temporary file goes
    if created:
        request.app.state.metrics.bytes_received.labels(h.type.value).inc(size)
    return JSONResponse({"name": h.name, "created": created}, status_code=201 if created else 200)


def _range(request: Request, size: int) -> tuple[int, int | None, bool]:
    rng = request.headers.get("range")
    if not rng:
        return 0, None, False
    try:
        unit, _, spec = rng.partition("=")
        start_s, _, end_s = spec.partition("-")
        if unit.strip() != "bytes" or "," in spec:
            raise ValueError
        if start_s == "":
            n = int(end_s)
            start, end = max(0, size - n), size - 1
        else:
            start = int(start_s)
            end = int(end_s) if end_s else size - 1
        end = min(end, size - 1)
        if start < 0 or start > end:
            raise ValueError
    except ValueError:
        raise RangeNotSatisfiable("invalid or unsatisfiable Range header") from None
    return start, end - start + 1, True


def _get(request: Request, auth: Auth, h: Handle) -> Response:
    vault = vault_of(request)
    pr = auth[1]
    size = vault.stat(pr, h, cached=True).size
    start, length, partial = _range(request, size)
    if auth[0].scope == "backup" and h.type is FileType.DATA:
        # an agent may read a pack's plain header (to resume after a crash), never the
        # encrypted blobs: reading old backups needs a restore token (and the offline kit)
        (hlen,) = struct.unpack("<I", vault.backend(pr).load(h, offset=max(0, size - 8), length=4))
        if not partial or start < size - 8 - hlen:
            raise refuse(request, PermissionDenied(
                "a backup token may read only pack headers; restoring needs a restore token"),
                actor=auth[0].actor, practice=pr.name)
    data = read_range(vault.backend(pr), h, start, length)  # large ranges: a view of the mapped file
    metrics = request.app.state.metrics
    read = "range" if partial else "whole"
    metrics.reads.labels(h.type.value, read).inc()
    metrics.bytes_sent.labels(h.type.value, read).inc(len(data))
    headers = {"Accept-Ranges": "bytes"}
    if partial:
        headers["Content-Range"] = f"bytes {start}-{start + len(data) - 1}/{size}"
    return Response(data, status_code=206 if partial else 200, media_type="application/octet-stream",
                    headers=headers)


def _head(request: Request, auth: Auth, h: Handle) -> Response:
    size = vault_of(request).stat(auth[1], h, cached=True).size
    return Response(status_code=200, headers={"Content-Length": str(size), "Accept-Ranges": "bytes"})


def serve_object(request: Request, auth: Auth, h: Handle, *, head: bool = False) -> Response:
    """GET (whole or one byte range) or HEAD of an object, for an authenticated caller."""
    return _head(request, auth, h) if head else _get(request, auth, h)


def _delete(request: Request, auth: Auth, h: Handle) -> Response:
    p, pr = auth
    v = vault_of(request)
    try:
        if approvals.required(v):  # two-person rule: recorded, carried out when a second admin approves
            out = approvals.request(v, p.actor, "delete", pr.name, {"type": h.type.value, "name": h.name})
            return JSONResponse(status_code=202, content=out)
        ops.admin_remove(vault_of(request), pr, h, actor=p.actor)
    except RempartError as exc:
        raise refuse(request, exc, actor=p.actor, practice=pr.name) from None
    return Response(status_code=204)


CONFIG = Handle(FileType.CONFIG, "config")
BINARY: dict[int | str, dict[str, Any]] = {200: {"content": {"application/octet-stream": {}}}, 206: {"description": "partial content (Range)"}}

# --- fixed routes first (they would otherwise match /{type}/{name}) ---------------------


@router.post("/blobs/exists", response_model=ExistsResponse)
def blobs_exist(request: Request, auth: HotReadAuth, body: ExistsRequest) -> ExistsResponse:
    """Which of these blob ids are stored (marks them "touched": GC keeps them a grace period)."""
    found = vault_of(request).exists(auth[1], [bytes.fromhex(i) for i in body.ids])
    return ExistsResponse(present=sorted(i.hex() for i in found))


@router.post("/runs", status_code=201)
def report_run(request: Request, auth: RunAuth, body: RunReport) -> dict[str, str]:
    """The agent reports a run's outcome (no paths, only counts and an error class)."""
    ops.report_run(vault_of(request), auth[1], body.outcome, body.error_class, dict(body.counts), actor=auth[0].actor)
    return {"status": "recorded"}


@router.post("/drills", status_code=201)
def report_drill(request: Request, auth: DrillAuth, body: DrillReport) -> dict[str, str]:
    """A restore drill reports its outcome (`rempart drill`: counts, sizes, time and an error
    class; no paths). A failed drill opens a "drill" alert until a later one passes."""
    from rempart.vault.watch.drills import DrillRecord, record_drill

    record_drill(vault_of(request), auth[1], DrillRecord(
        body.outcome, snapshot=body.snapshot, files=body.files, bytes=body.bytes, seconds=body.seconds,
        error_class=body.error_class or None), actor=auth[0].actor)
    return {"status": "recorded"}


@router.get("/status")
def practice_status(request: Request, auth: ReadAuth) -> dict[str, Any]:
    """Last snapshot (server time), last clean point, freeze, usage, last run."""
    return ops.status(vault_of(request), auth[1])


@router.get("/timeline")
def practice_timeline(request: Request, auth: ReadAuth) -> list[dict[str, Any]]:
    """Snapshots with server receive time and detection verdict, newest first."""
    return ops.timeline(vault_of(request), auth[1])


@router.get("/config", response_class=Response, responses=BINARY)
def get_config(request: Request, auth: HotReadAuth) -> Response:
    return _get(request, auth, CONFIG)


@router.head("/config")
def head_config(request: Request, auth: HotReadAuth) -> Response:
    return _head(request, auth, CONFIG)


@router.post("/config", response_model=Created, openapi_extra=UPLOAD_BODY)
async def post_config(request: Request, auth: WriteAuth) -> Response:
    """Create the repository config once; identical bytes again is a no-op, different is 409."""
    return await upload(request, auth, CONFIG)


@router.delete("/config", status_code=204)
def delete_config(request: Request, auth: AdminAuth) -> Response:
    """Provider admin only, under the same rules as other deletions."""
    return _delete(request, auth, CONFIG)


@router.get("/{type}/", response_model=list[FileEntry])
def list_files(request: Request, auth: HotReadAuth, type: ObjType) -> list[FileEntry]:
    return [FileEntry(name=i.name, size=i.size) for i in vault_of(request).list_files(auth[1], FileType(type.value))]


@router.get("/{type}/{name}", response_class=Response, responses=BINARY)
async def get_file(request: Request, type: ObjType, name: ObjName, practice: PracticeName) -> Response:
    # the hottest route of a restore (ranged reads of blob runs): authentication and the read
    # run in ONE worker-thread hop; a sync dependency plus a sync endpoint cost two hops and
    # FastAPI's dependency machinery (about 10 % of the vault's CPU per small ranged read)
    h = Handle(FileType(type.value), name)
    return await run_in_threadpool(lambda: _get(request, require_practice(request, practice, READ, True), h))


@router.head("/{type}/{name}")
def head_file(request: Request, auth: HotReadAuth, type: ObjType, name: ObjName) -> Response:
    return _head(request, auth, Handle(FileType(type.value), name))


@router.post("/{type}/{name}", response_model=Created, openapi_extra=UPLOAD_BODY,
             responses={409: {"description": "missing blobs (snapshot/index) or name taken"},
                        413: {"description": "too large"}, 422: {"description": "not a valid object"},
                        507: {"description": "quota exceeded"}})
async def post_file(request: Request, auth: WriteAuth, type: ObjType, name: ObjName) -> Response:
    """Create-only upload; the name must be the SHA-256 of the body and the body must parse."""
    # served by rempart.vault.fastpath; this route gives the OpenAPI description and answers
    # the requests that path leaves to FastAPI (the app built with fast_objects=False: all)
    return await upload(request, auth, Handle(FileType(type.value), name))


@router.delete("/{type}/{name}", status_code=204)
def delete_file(request: Request, auth: AdminAuth, type: ObjType, name: ObjName) -> Response:
    """Provider admin only; refused under freeze, below the minimum age, or for referenced packs."""
    return _delete(request, auth, Handle(FileType(type.value), name))
