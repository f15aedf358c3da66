"""The agent's credential for one repository: recovery public key + id key, in the state dir."""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path

from rempart.core.errors import IntegrityError, NotEnrolledError
from rempart.crypto.keys import IdKey, RecoveryPublicKey


@dataclass(frozen=True)
class AgentCredential:
    repo_id: str
    public_key: RecoveryPublicKey
    id_key: IdKey

    def __repr__(self) -> str:
        return f"AgentCredential(repo_id={self.repo_id!r}, <secret>)"


def repo_state_dir(state_dir: Path, repo_id: str) -> Path:
    return state_dir / "repos" / repo_id


def save_credential(state_dir: Path, cred: AgentCredential) -> Path:
    folder = repo_state_dir(state_dir, cred.repo_id)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "agent-key.json"
    doc = {
        "repository": cred.repo_id,
        "recovery_public_key": base64.b64encode(cred.public_key.raw).decode(),
        "id_key": base64.b64encode(cred.id_key.raw).decode(),
    }
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load_credential(state_dir: Path, repo_id: str) -> AgentCredential:
    path = repo_state_dir(state_dir, repo_id) / "agent-key.json"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise NotEnrolledError(
            f"this machine holds no agent key for repository {repo_id[:8]}",
            hint="run `rempart key add-agent --kit FILE` with the recovery kit, or check --state-dir",
        ) from None
    except ValueError as exc:
        raise IntegrityError(f"agent key file {path} is damaged") from exc
    return AgentCredential(
        repo_id=repo_id,
        public_key=RecoveryPublicKey(base64.b64decode(doc["recovery_public_key"])),
        id_key=IdKey(base64.b64decode(doc["id_key"])),
    )
