"""The vault keeps freed memory for the next request (rempart.vault.memory): buffers of a few
hundred KiB allocated and freed over and over reuse the same pages instead of new, faulted-in
and zeroed ones each time."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import resource, sys
if sys.argv[1] == "kept":
    from rempart.vault.memory import keep_freed_memory
    assert keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def receive(rounds):  # what the vault does per piece of an upload arriving over TLS
    for _ in range(rounds):
        records = [b"r" * (16 << 10) for _ in range(16)]  # decrypted TLS records
        joined = b"".join(records)  # one buffer for the HTTP parser
        body = joined[100:]  # the parser's body piece
        del records, joined, body
receive(10)  # warm up
before = faults()
receive(100)
print(faults() - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return int(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_buffers_are_reused_without_new_page_faults() -> None:
    plain = _faults("plain")
    kept = _faults("kept")
    # 100 rounds of ~0.75 MiB: by default the two 256 KiB buffers of each round come in fresh
    # pages (~160 faults a round); with the vault's settings the same heap pages serve them all
    assert plain > 8_000, f"the default allocator did not fault as expected ({plain}): test meaningless"
    assert kept < 1_000, f"{kept} page faults with the vault's allocator settings"
