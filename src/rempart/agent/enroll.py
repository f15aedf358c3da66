"""Enroll a practice PC with a vault: code → backup token → repository + kit → agent config.

Order matters for "loses nothing": the token is saved (0600) as soon as the vault hands it
out, because the code is single use; if a later step fails, running ``rempart enroll`` again
resumes with the saved token and needs no new code.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from rempart.agent.connect import TOKEN_FILE, write_secret_file
from rempart.agent.setup import check_kit_target, create_repository
from rempart.core.clock import Clock
from rempart.core.errors import AuthenticationError, NotFound, UserError
from rempart.repository.config import CONFIG, DEFAULT_PACK_SIZE
from rempart.storage.wrappers import RetryBackend

CA_FILE = "vault-ca.pem"
CONFIG_FILE = "agent.toml"


@dataclass(frozen=True)
class EnrollRequest:
    vault: str                      # https://HOST:PORT
    code: str | None                # None: resume with a saved token
    state_dir: Path
    config_path: Path
    kit_path: Path
    passphrase: str
    paths: tuple[Path, ...] = ()
    ca_file: Path | None = None
    pin: str = ""
    printable: Path | None = None
    kdf: dict[str, object] | None = None
    pack_size: int = DEFAULT_PACK_SIZE
    schedule: dict[str, object] = field(default_factory=dict)
    limits: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class EnrollResult:
    practice: str
    repository: str
    repo_id: str
    config_path: Path
    token_file: Path
    resumed: bool


def base_url(vault: str) -> str:
    parts = urlsplit(vault.strip())
    if parts.scheme != "https" or not parts.hostname:
        raise UserError("--vault must look like https://HOST:PORT (plain http is refused)")
    if parts.username or parts.password:
        raise UserError("credentials are not accepted in the vault URL")
    return f"https://{parts.netloc}"


def enroll(req: EnrollRequest, clock: Clock) -> EnrollResult:
    from rempart.storage import vaultclient

    url = base_url(req.vault)
    check_kit_target(req.kit_path)
    for p in req.paths:
        if not p.exists():
            raise UserError(f"{p}: no such file or folder (given with --path)")
    if req.config_path.exists():
        raise UserError(f"{req.config_path} exists already: this machine seems enrolled",
                        hint="remove the agent configuration first to enroll again")
    req.state_dir.mkdir(parents=True, exist_ok=True)
    token_file = req.state_dir / TOKEN_FILE
    ca = None
    if req.ca_file is not None:
        ca = req.state_dir / CA_FILE
        if req.ca_file.resolve() != ca.resolve():
            try:
                shutil.copyfile(req.ca_file, ca)
            except OSError as exc:
                raise UserError(f"cannot read the vault CA file {req.ca_file}: {exc.strerror}") from exc
    resumed = False
    if token_file.exists():
        token = token_file.read_text(encoding="utf-8").strip()
        resumed = True
    elif not req.code:
        raise UserError("an enrollment code is needed",
                        hint="set REMPART_ENROLL_CODE (preferred), pass --code -, or --code CODE")
    else:
        try:
            token = vaultclient.enroll(url, req.code.strip(), ca=ca, pin=req.pin or None)
        except AuthenticationError as exc:
            raise AuthenticationError(
                exc.message, hint="ask your provider for a new code (`rempart vault practice enroll-code NAME`)"
            ) from exc
        write_secret_file(token_file, token)
    who = vaultclient.whoami(url, token, ca=ca, pin=req.pin or None)
    practice = str(who.get("practice") or "")
    if who.get("scope") != "backup" or not practice:
        raise UserError("the vault did not hand out a backup token for a practice")
    repo_url = f"{url}/{practice}"
    backend = RetryBackend(vaultclient.VaultBackend(repo_url, token=token, ca=ca, pin=req.pin or None))
    try:
        if resumed and _has_config(backend):
            raise UserError(f"practice {practice} has a repository already and this machine holds its token",
                            hint="to enroll again, remove the state folder's vault-token and ask for a new code; "
                            "to back up with the existing repository use `rempart key add-agent --kit FILE`")
        created = create_repository(backend, req.state_dir, req.kit_path, req.passphrase, clock,
                                    kdf=req.kdf, printable=req.printable, pack_size=req.pack_size)
    finally:
        backend.close()
    write_config(req.config_path, repo_url=repo_url, ca=ca, pin=req.pin, token_file=token_file,
                 paths=req.paths, schedule=req.schedule, limits=req.limits)
    return EnrollResult(practice, repo_url, created.repo_id, req.config_path, token_file, resumed)


def _has_config(backend: RetryBackend) -> bool:
    try:
        backend.stat(CONFIG)
        return True
    except NotFound:
        return False


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def write_config(path: Path, *, repo_url: str, ca: Path | None, pin: str, token_file: Path,
                 paths: tuple[Path, ...], schedule: dict[str, object], limits: dict[str, object]) -> None:
    lines = ["# Rempart agent configuration, written by `rempart enroll`. See docs/agent.md.", "",
             "[repository]", f"url = {_toml(repo_url)}", f"token_file = {_toml(token_file)}"]
    if ca is not None:
        lines.append(f"ca_file = {_toml(ca)}")
    if pin:
        lines.append(f"pin = {_toml(pin)}")
    lines += ["", "[backup]", f"paths = {_toml([str(p.absolute()) for p in paths])}", "excludes = []", ""]
    lines += ["[schedule]"] + [f"{k} = {_toml(v)}" for k, v in schedule.items()] + [""]
    lines += ["[limits]"] + [f"{k} = {_toml(v)}" for k, v in limits.items()] + [""]
    lines += ["# [[sources]]   # consistent database copies, see docs/agent.md",
              "# kind = \"sqlite\"", "# name = \"agenda\"", "# path = \"C:/Cabinet/agenda.db\"", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    tmp.replace(path)
