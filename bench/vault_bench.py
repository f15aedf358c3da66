"""Vault throughput benchmark (a script, not a test).

    python bench/vault_bench.py --size-mb 100 --agents 20 --agent-size-mb 4 [--out results.json]
    python bench/vault_bench.py --size-mb 300 --agents 0 --repeat 2 --restores 3 --src before=... --src after=...

1. Backup and restore of the same generated practice folder (bench/datagen.py) to a local
   folder and through a vault on loopback (HTTPS, pinned certificate, real processes): reports
   seconds, MiB/s and the vault/local throughput ratio (target >= 0.8).
   Per operation also the CPU seconds (user + sys) of the client process and of the vault server
   meanwhile, and the client's peak RSS for restores (no whole-pack cache: stays near local's).
2. N agents (separate ``rempart backup`` processes, each with its own practice and token)
   backing up at once to one vault: reports errors (target 0) and the wall time.

Hygiene, both for local and vault alike: every timed command starts after ``sync`` (writeback
of the previous step does not run during it), and each restore goes to a folder of its own, all
deleted only when the benchmark ends (about 2 GiB per repeat of a 300 MB folder). Deleting the
previous restore right before the next one made every file creation of that restore scan the
just-freed inodes (on an ext4 without a journal, ``recently_deleted``, for up to 6 minutes):
2,500 files then cost about 1 s more of kernel CPU, by an amount that depended on timing, on
local and vault restores alike (docs/benchmarks.md, "Vault throughput (session 12)").

Before/after on a shared machine: ``--src before=/tmp/base --src after=/work/main`` (checkouts;
their ``src`` goes first on PYTHONPATH for the client and for that source's own vault process)
runs each repeat for every source in turn, alternating the order, and reports medians per
source; ``--data-dir`` keeps the generated folder between invocations.

A vault on its own host (the deployment) does not take the practice PC's cores; on loopback it
does. ``--client-cpus 0 --vault-cpus 1`` models the deployment on one machine: every timed
client command (local and vault alike) runs on the first set of CPUs, the vault on the second
(``taskset``). It is a different measurement from the default one (the client has fewer cores),
reported as such, not a replacement for it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_measure import checkout  # noqa: E402

PY = sys.executable
PASS = "benchmark passphrase, not secret"


#: extra environment of every rempart process of the source being measured (its PYTHONPATH)
SRC_ENV: dict[str, str] = {}
#: the environment of the measured processes: without PYTHONDONTWRITEBYTECODE (each source is
#: byte-compiled once before measuring, so that no process compiles its modules: local and vault
#: alike, every source alike)
BASE_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def run(args: list[str], env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(args, env={**BASE_ENV, **SRC_ENV, **(env or {})}, capture_output=True, text=True)
    if check and r.returncode not in (0, 30):  # 30: detection alert, still a completed backup
        raise RuntimeError(f"{' '.join(args[:6])} failed ({r.returncode}): {r.stderr[-2000:]}")
    return r


#: CPU seconds (user + sys) of the last timed client command and of the vault server meanwhile,
#: and the client's peak resident memory (MiB)
CPU: dict[str, float] = {}


def run_measured(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Run a command (must succeed); its CPU seconds and peak RSS in MiB (``wait4``: this child
    only, not the largest child so far)."""
    with tempfile.TemporaryFile() as out:
        p = subprocess.Popen(args, env={**BASE_ENV, **SRC_ENV, **env}, stdout=subprocess.DEVNULL, stderr=out)
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode not in (0, 30):
            out.seek(0)
            raise RuntimeError(f"{' '.join(args[:6])} failed ({p.returncode}): {out.read()[-2000:].decode()}")
    return ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024


def _proc_cpu(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


SERVER_PID: list[int | None] = [None]
#: --client-cpus / --vault-cpus: ``taskset -c LIST`` prefixes (empty: no pinning)
PIN: dict[str, list[str]] = {"client": [], "vault": []}


#: --profile-server DIR: py-spy samples of the vault server during each vault backup/restore
PROFILE: list[Path | None] = [None]
#: file name prefix of the profiles (the source's name)
TAG: list[str] = [""]


def rempart(repo: str, env: dict[str, str], *args: str) -> float:
    spy = None
    out = PROFILE[0]
    if out is not None and repo.startswith("https://") and args[0] in ("backup", "restore"):
        spy = subprocess.Popen([str(Path(PY).parent / "py-spy"), "record", "--pid", str(SERVER_PID[0]), "--rate", "200",
                                "--format", "raw", "--nonblocking", "-o", str(out / f"server-{TAG[0]}{args[0]}.txt")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
    os.sync()  # the previous step's writes go to disk now, not during this command
    s0 = _proc_cpu(SERVER_PID[0])
    t = time.perf_counter()
    CPU["client"], CPU["maxrss_mib"] = run_measured([*PIN["client"], PY, "-m", "rempart.cli.main", "-q", "-r", repo, *args],
                                                  env)
    dt = time.perf_counter() - t
    CPU["server"] = _proc_cpu(SERVER_PID[0]) - s0
    if spy is not None:
        spy.send_signal(2)
        spy.wait(timeout=60)
    return dt


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Vault:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        root.mkdir(parents=True)
        self.cfg = root / "vault.toml"
        self.cfg.write_text(f'data_dir = "data"\n[listen]\nhost = "127.0.0.1"\nport = {self.port}\n'
                            '[tls]\nenabled = true\nself_signed = true\nhostnames = ["127.0.0.1"]\n'
                            '[limits]\nmax_request_bytes = 134217728\n')
        self.pin = self.cli("fingerprint").strip()
        self.proc: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str) -> str:
        return run([PY, "-m", "rempart.cli.main", "vault", *args, "--config", str(self.cfg)]).stdout

    def add(self, name: str) -> dict[str, str]:
        out = run([PY, "-m", "rempart.cli.main", "--json", "vault", "practice", "add", name, "--config", str(self.cfg)])
        toks: dict[str, str] = json.loads(out.stdout)["tokens"]
        return toks

    def start(self) -> None:
        log = open(self.root / "vault.log", "ab")
        self.env = dict(SRC_ENV)
        self.proc = subprocess.Popen([*PIN["vault"], PY, "-m", "rempart.cli.main", "vault", "serve", "--config",
                                      str(self.cfg)],
                                     stdout=log, stderr=subprocess.STDOUT, env={**BASE_ENV, **self.env})
        SERVER_PID[0] = self.proc.pid
        for _ in range(300):
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("vault did not start")

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(timeout=30)

    def url(self, practice: str) -> str:
        return f"https://127.0.0.1:{self.port}/{practice}"


def throughput(work: Path, vault: Vault, data: Path, tag: str = "bench", restores: int = 1) -> dict[str, float]:
    """Backup to a local folder and through the vault, then ``restores`` restores of each,
    local and vault alternating (restore seconds, CPU and ratio: medians over them)."""
    mib = sum(f.stat().st_size for f in data.rglob("*") if f.is_file()) / 2**20
    res: dict[str, float] = {"mib": round(mib, 1)}
    toks = vault.add(tag)
    work = work / tag
    work.mkdir()
    setups: dict[str, tuple[str, dict[str, str]]] = {}
    for kind in ("local", "vault"):
        env = {"REMPART_KIT_PASSPHRASE": PASS, "REMPART_STATE_DIR": str(work / f"state-{kind}")}
        if kind == "local":
            repo = str(work / "repo-local")
            SERVER_PID[0] = None
        else:
            repo = vault.url(tag)
            SERVER_PID[0] = vault.proc.pid if vault.proc else None
            env.update({"REMPART_VAULT_TOKEN": toks["backup"], "REMPART_VAULT_CA": vault.pin})
        rempart(repo, env, "init", "--kit", str(work / f"kit-{kind}"))
        res[f"{kind}_backup_s"] = round(rempart(repo, env, "backup", str(data)), 2)
        res[f"{kind}_backup_cpu_client_s"] = round(CPU["client"], 2)
        if kind == "vault":
            res["vault_backup_cpu_server_s"] = round(CPU["server"], 2)
            env["REMPART_VAULT_TOKEN"] = toks["restore"]
        setups[kind] = (repo, env)
    each: dict[str, list[float]] = {}
    for i in range(max(1, restores)):
        for kind in ("local", "vault") if i % 2 == 0 else ("vault", "local"):
            repo, env = setups[kind]
            SERVER_PID[0] = vault.proc.pid if kind == "vault" and vault.proc else None
            target = work / f"out-{kind}-{i}"  # kept until the end (see the module's docstring)
            dt = rempart(repo, env, "restore", "latest", "--target", str(target), "--kit", str(work / f"kit-{kind}"))
            each.setdefault(f"{kind}_restore_s", []).append(dt)
            each.setdefault(f"{kind}_restore_cpu_client_s", []).append(CPU["client"])
            each.setdefault(f"{kind}_restore_maxrss_mib", []).append(CPU["maxrss_mib"])
            if kind == "vault":
                each.setdefault("vault_restore_cpu_server_s", []).append(CPU["server"])
        each.setdefault("restore_ratio", []).append(each["local_restore_s"][-1] / each["vault_restore_s"][-1])
    for key, values in each.items():
        res[key] = round(statistics.median(values), 2 if "maxrss" not in key else 1)
    for op in ("backup", "restore"):
        res[f"local_{op}_mib_s"] = round(mib / res[f"local_{op}_s"], 1)
        res[f"vault_{op}_mib_s"] = round(mib / res[f"vault_{op}_s"], 1)
    res["backup_ratio"] = round(res["local_backup_s"] / res["vault_backup_s"], 2)
    return res


def many_agents(work: Path, vault: Vault, agents: int, size_mb: int) -> dict[str, float]:
    data = work / "agent-data"
    run([PY, str(HERE / "datagen.py"), "generate", str(data), "--size-mb", str(size_mb), "--seed", "2"])
    SERVER_PID[0] = vault.proc.pid if vault.proc else None
    envs = []
    for i in range(agents):
        toks = vault.add(f"agent-{i:02d}")
        env = {"REMPART_KIT_PASSPHRASE": PASS, "REMPART_STATE_DIR": str(work / f"st-{i}"),
               "REMPART_VAULT_TOKEN": toks["backup"], "REMPART_VAULT_CA": vault.pin}
        rempart(vault.url(f"agent-{i:02d}"), env, "init", "--kit", str(work / f"kit-{i}"))
        envs.append(env)

    def one(i: int) -> int:
        r = run([PY, "-m", "rempart.cli.main", "-q", "-r", vault.url(f"agent-{i:02d}"), "backup", str(data)],
                envs[i], check=False)
        return 0 if r.returncode in (0, 30) else 1

    t = time.perf_counter()
    with ThreadPoolExecutor(agents) as ex:
        errors = sum(ex.map(one, range(agents)))
    return {"agents": agents, "agent_mib": size_mb, "errors": errors, "wall_s": round(time.perf_counter() - t, 2)}


def server_stack() -> str:
    """Which HTTP parser and event loop uvicorn picks for the vault (it prefers httptools and
    uvloop when they are installed): the vault's CPU per MiB depends on them."""
    names = []
    for fast, slow in (("httptools", "h11"), ("uvloop", "asyncio")):
        try:
            __import__(fast)
            names.append(fast)
        except ImportError:
            names.append(slow)
    return "+".join(names)


def compile_source(env: dict[str, str]) -> None:
    """Byte-compile the rempart package the measured processes will import (warm, like an
    installed package), and the venv's site-packages once."""
    import rempart

    folder = env.get("PYTHONPATH") or str(Path(rempart.__file__).resolve().parent.parent)
    run([PY, "-m", "compileall", "-q", "-j", "0", str(Path(folder) / "rempart")])
    for sp in {p for p in sys.path if p.endswith("site-packages")}:
        run([PY, "-m", "compileall", "-q", "-j", "0", sp], check=False)


def _median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]} | {"runs": len(runs)}


def _source(spec: str) -> tuple[str, dict[str, str]]:
    name, src = checkout(spec)
    return name, {"PYTHONPATH": str(src)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=100)
    ap.add_argument("--agents", type=int, default=20)
    ap.add_argument("--agent-size-mb", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=1, help="throughput runs (medians reported)")
    ap.add_argument("--restores", type=int, default=1,
                    help="restores per throughput run, local and vault alternating (medians; restore_ratio: "
                         "median of the per-pair ratios)")
    ap.add_argument("--src", action="append", default=[], metavar="NAME=DIR",
                    help="measure this checkout (repeatable: sources interleaved, order alternating per repeat)")
    ap.add_argument("--data-dir", type=Path, help="the generated practice folder (made if missing, kept)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--profile-server", type=Path, metavar="DIR",
                    help="record py-spy samples (raw, flamegraph-collapsed) of the vault during vault backup/restore")
    ap.add_argument("--client-cpus", metavar="LIST", help="run the timed client commands on these CPUs (taskset -c)")
    ap.add_argument("--vault-cpus", metavar="LIST", help="run the vault on these CPUs (taskset -c)")
    a = ap.parse_args()
    for who, cpus in (("client", a.client_cpus), ("vault", a.vault_cpus)):
        PIN[who] = ["taskset", "-c", cpus] if cpus else []
    if a.profile_server:
        a.profile_server.mkdir(parents=True, exist_ok=True)
        PROFILE[0] = a.profile_server.resolve()
    sources = [_source(s) for s in a.src] or [("current", {})]
    work = Path(tempfile.mkdtemp(prefix="rempart-vault-bench-"))
    data = a.data_dir.resolve() if a.data_dir else work / "data"
    if not data.exists():
        run([PY, str(HERE / "datagen.py"), "generate", str(data), "--size-mb", str(a.size_mb), "--seed", "1"])
    vaults: dict[str, Vault] = {}
    result: dict[str, object] = {"cpus": os.cpu_count(), "client_cpus": a.client_cpus or "all",
                                 "vault_cpus": a.vault_cpus or "all", "load_avg_1m_start": os.getloadavg()[0],
                                 "server_stack": server_stack()}
    try:
        for name, env in sources:
            SRC_ENV.clear()
            SRC_ENV.update(env)
            compile_source(env)
            vaults[name] = Vault(work / f"vault-{name}")
            vaults[name].start()
        runs: dict[str, list[dict[str, float]]] = {name: [] for name, _ in sources}
        for i in range(max(1, a.repeat)):
            for name, env in (sources if i % 2 == 0 else sources[::-1]):
                SRC_ENV.clear()
                SRC_ENV.update(env)
                TAG[0] = f"{name}-{i}-" if len(sources) > 1 or a.repeat > 1 else ""
                (work / name).mkdir(exist_ok=True)
                r = throughput(work / name, vaults[name], data, f"bench-{i}", a.restores)
                r["load_avg_1m"] = round(os.getloadavg()[0], 2)
                runs[name].append(r)
                print(json.dumps({"source": name, "run": i, **r}), file=sys.stderr, flush=True)
        for name, env in sources:
            SRC_ENV.clear()
            SRC_ENV.update(env)
            rs = runs[name]
            entry: dict[str, object] = {"throughput": rs[0] if len(rs) == 1 else _median_of(rs)}
            if len(rs) > 1:
                entry["each_run"] = rs
            if a.agents:
                entry["concurrency"] = many_agents(work / name, vaults[name], a.agents, a.agent_size_mb)
            if len(sources) == 1:
                result.update(entry)
            else:
                result[name] = entry | {"pythonpath": env.get("PYTHONPATH", "")}
        result["load_avg_1m_end"] = os.getloadavg()[0]
    finally:
        for v in vaults.values():
            v.stop()
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")
    errors = [e["concurrency"]["errors"] for e in ([result] if len(sources) == 1 else [result[n] for n, _ in sources])
              if isinstance(e, dict) and isinstance(e.get("concurrency"), dict)]
    return 0 if not any(errors) else 1


if __name__ == "__main__":
    sys.exit(main())
