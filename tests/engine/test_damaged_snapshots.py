"""A damaged snapshot file (a bad disk sector, a file cut short in a local repository) must not
hide the others: listings and 'latest' skip it with a warning, naming it is an integrity error,
and `check` reports it."""

from __future__ import annotations

from pathlib import Path

from tests.engine.conftest import Env, run_subprocess


def _three_versions(repo: Env) -> tuple[Path, list[str]]:
    src = repo.tmp / "src"
    src.mkdir()
    names = []
    for version in (1, 2, 3):
        (src / "agenda.txt").write_text(f"version {version}\n" * 100)
        r = run_subprocess(repo, "--json", "backup", str(src))
        assert r.code == 0, r.err
        names.append(r.json()["snapshot"])
    return src, names


def _damage(repo: Env, name: str) -> None:
    path = repo.repo / "snapshots" / name
    path.write_bytes(path.read_bytes()[:40])  # cut short


def _restored_text(repo: Env, ref: str, target: Path, src: Path) -> tuple[int, str, str]:
    r = run_subprocess(repo, "restore", ref, "--target", str(target), "--kit", str(repo.kit))
    f = target / src.relative_to("/") / "agenda.txt"
    return r.code, r.err, f.read_text() if f.exists() else ""


def test_listing_and_latest_skip_a_damaged_snapshot(repo: Env) -> None:
    src, names = _three_versions(repo)
    _damage(repo, names[1])
    r = run_subprocess(repo, "--json", "snapshots")
    assert r.code == 0, r.err
    assert [row["id"] for row in r.json()] == [names[0], names[2]]
    assert f"warning: snapshot {names[1][:8]} is damaged and was skipped" in r.err

    code, err, text = _restored_text(repo, "latest", repo.tmp / "out1", src)
    assert code == 0, err
    assert text == "version 3\n" * 100

    _damage(repo, names[2])  # now the newest is damaged too: 'latest' is the newest readable one
    code, err, text = _restored_text(repo, "latest", repo.tmp / "out2", src)
    assert code == 0, err
    assert f"warning: snapshot {names[2][:8]} is damaged and was skipped" in err
    assert text == "version 1\n" * 100


def test_naming_a_damaged_snapshot_is_an_integrity_error_and_check_reports_it(repo: Env) -> None:
    src, names = _three_versions(repo)
    _damage(repo, names[1])
    code, err, text = _restored_text(repo, names[1][:8], repo.tmp / "out", src)
    assert code == 20
    assert f"rempart: error: snapshot {names[1][:8]} is damaged and cannot be read" in err
    assert "Traceback" not in err and text == ""
    r = run_subprocess(repo, "check")
    assert r.code == 20
    assert f"error: snapshot {names[1][:8]} does not match its name (tampered or damaged)" in r.out + r.err
    assert "1 error(s) found" in r.out + r.err
    r = run_subprocess(repo, "check", "--read-data", "--kit", str(repo.kit))
    assert r.code == 20
    assert "1 error(s) found" in r.out + r.err  # reported once, not again by the data pass
