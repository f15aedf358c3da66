"""Dashboard over HTTP (in-process ASGI client, real database): login, sessions, CSRF, roles,
rate limiting, escaping, freeze/release audited, and that nothing encrypted is ever shown."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from watch_helpers import Env, backup, make_env

from rempart.core.errors import UserError
from rempart.vault import db
from rempart.vault import practices as vp
from rempart.vault.dashboard import auth
from rempart.vault.watch import tables as t

ADMIN_PW = "correct horse battery staple"
PROV_PW = "another long passphrase 42"


@pytest.fixture
def denv(tmp_path: Path) -> Env:
    env = make_env(tmp_path)
    env.add("cabinet-a", provider="infogarde")
    env.add("cabinet-b", provider="autreprest")
    backup(env.vault, "cabinet-a")
    backup(env.vault, "cabinet-b")
    with env.vault.engine.begin() as conn:
        auth.add_user(conn, "admin", ADMIN_PW, "admin", None, "fr", env.vault.now())
        auth.add_user(conn, "tech", PROV_PW, "provider", "infogarde", "en", env.vault.now())
    return env


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, html[:500]
    return m.group(1)


def login(c: TestClient, user: str, pw: str) -> TestClient:
    form = c.get("/ui/login")
    r = c.post("/ui/login", data={"username": user, "password": pw, "csrf": csrf_of(form.text)},
               follow_redirects=False)
    assert r.status_code == 303, r.text[:300]
    return c


def audit_actions(env: Env) -> list[tuple[str, str, str | None, str]]:
    with env.vault.engine.connect() as conn:
        return [(r.actor, r.action, r.practice, r.outcome)
                for r in conn.execute(sa.select(db.audit).order_by(db.audit.c.seq))]


def test_password_hash_is_scrypt_and_salted() -> None:
    h1, h2 = auth.hash_password("x" * 12), auth.hash_password("x" * 12)
    assert h1.startswith("scrypt$15$8$1$") and h1 != h2
    assert auth.verify_password("x" * 12, h1) and not auth.verify_password("x" * 11 + "y", h1)
    with pytest.raises(UserError):
        auth.hash_password("short")


def test_login_cookie_flags_and_pages(denv: Env) -> None:
    c = TestClient(denv.app)
    assert c.get("/ui/practices", follow_redirects=False).headers["location"] == "/ui/login"
    form = c.get("/ui/login")
    assert '<html lang="fr">' in form.text
    r = c.post("/ui/login", data={"username": "admin", "password": ADMIN_PW, "csrf": csrf_of(form.text)},
               follow_redirects=False)
    cookie = r.headers["set-cookie"]
    assert "rempart_session=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    sid = c.cookies.get("rempart_session")
    with denv.vault.engine.connect() as conn:
        stored = conn.execute(sa.select(t.sessions.c.id_hash)).scalars().all()
    assert sid not in stored and len(stored) == 1  # only the hash is stored
    page = c.get("/ui/practices")
    assert page.status_code == 200 and "cabinet-a" in page.text and "cabinet-b" in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'none'")
    assert 'data-light="green"' in page.text
    assert ("admin", "ui.login") in {(a[0].removeprefix("user:"), a[1]) for a in audit_actions(denv)}


def test_secure_cookie_when_tls(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    env.app.state.dashboard.secure = True
    with env.vault.engine.begin() as conn:
        auth.add_user(conn, "admin", ADMIN_PW, "admin", None, "fr", env.vault.now())
    c = TestClient(env.app, base_url="https://testserver")
    form = c.get("/ui/login")
    assert "Secure" in form.headers["set-cookie"]
    r = c.post("/ui/login", data={"username": "admin", "password": ADMIN_PW, "csrf": csrf_of(form.text)},
               follow_redirects=False)
    assert "Secure" in r.headers["set-cookie"]


def test_wrong_passwords_are_rate_limited(denv: Env) -> None:
    c = TestClient(denv.app)
    token = csrf_of(c.get("/ui/login").text)
    codes = [c.post("/ui/login", data={"username": "admin", "password": f"wrong-{i}", "csrf": token}).status_code
             for i in range(3)]
    assert codes == [401, 401, 401]
    r = c.post("/ui/login", data={"username": "admin", "password": ADMIN_PW, "csrf": token})
    assert r.status_code == 429 and "Retry-After" in r.headers  # even the right password waits
    denv.clock.advance(601)  # the window slides (dashboard login_window_seconds = 600)
    r = c.post("/ui/login", data={"username": "admin", "password": ADMIN_PW, "csrf": token}, follow_redirects=False)
    assert r.status_code == 303
    outcomes = [a[3] for a in audit_actions(denv) if a[1] == "ui.login"]
    assert outcomes.count("authentication-error") == 3 and "rate-limited" in outcomes
    assert all(ADMIN_PW not in str(a) and "wrong-0" not in str(a) for a in audit_actions(denv))


def test_unknown_user_and_login_csrf(denv: Env) -> None:
    c = TestClient(denv.app)
    token = csrf_of(c.get("/ui/login").text)
    assert c.post("/ui/login", data={"username": "nobody", "password": "x" * 20, "csrf": token}).status_code == 401
    assert c.post("/ui/login", data={"username": "admin", "password": ADMIN_PW, "csrf": "forged"}).status_code == 403
    fresh = TestClient(denv.app)  # no login cookie at all: a cross-site login attempt
    assert fresh.post("/ui/login", data={"username": "admin", "password": ADMIN_PW, "csrf": token}).status_code == 403


def test_forged_csrf_on_freeze_changes_nothing(denv: Env) -> None:
    c = login(TestClient(denv.app), "admin", ADMIN_PW)
    for data in ({"reason": "x"}, {"reason": "x", "csrf": "forged"}, {"reason": "x", "csrf": ""}):
        r = c.post("/ui/practices/cabinet-a/freeze", data=data)
        assert r.status_code == 403
    assert not denv.vault.practice("cabinet-a").frozen
    other = login(TestClient(denv.app), "tech", PROV_PW)  # another session's token is not valid here
    tok = csrf_of(other.get("/ui/practices").text)
    assert c.post("/ui/practices/cabinet-a/freeze", data={"csrf": tok}).status_code == 403
    assert not denv.vault.practice("cabinet-a").frozen
    assert sum(1 for a in audit_actions(denv) if a[3] == "csrf-refused") == 4


def test_provider_sees_only_its_practices(denv: Env) -> None:
    c = login(TestClient(denv.app), "tech", PROV_PW)
    page = c.get("/ui/practices")
    assert '<html lang="en">' in page.text  # the user's language
    assert "cabinet-a" in page.text and "cabinet-b" not in page.text
    assert c.get("/ui/practices/cabinet-a").status_code == 200
    assert c.get("/ui/practices/cabinet-b").status_code == 404
    assert c.get("/ui/practices/does-not-exist").status_code == 404
    tok = csrf_of(page.text)
    assert c.post("/ui/practices/cabinet-b/freeze", data={"csrf": tok}).status_code == 404
    assert not denv.vault.practice("cabinet-b").frozen
    audit = c.get("/ui/audit").text
    # records of its own practices, and its own actions; never another provider's practice records
    assert 'data-label="Practice">cabinet-a<' in audit and 'data-label="Practice">cabinet-b<' not in audit


def test_freeze_by_provider_release_by_admin_audited(denv: Env) -> None:
    tech = login(TestClient(denv.app), "tech", PROV_PW)
    tok = csrf_of(tech.get("/ui/practices/cabinet-a").text)
    r = tech.post("/ui/practices/cabinet-a/freeze", data={"csrf": tok, "reason": "odd files"}, follow_redirects=False)
    assert r.status_code == 303
    assert denv.vault.practice("cabinet-a").frozen
    page = tech.get("/ui/practices/cabinet-a").text
    assert 'id="release"' not in page and "Only a vault administrator" in page
    assert tech.post("/ui/practices/cabinet-a/release", data={"csrf": tok}).status_code == 403
    assert denv.vault.practice("cabinet-a").frozen
    admin = login(TestClient(denv.app), "admin", ADMIN_PW)
    tok = csrf_of(admin.get("/ui/practices/cabinet-a").text)
    r = admin.post("/ui/practices/cabinet-a/release", data={"csrf": tok}, follow_redirects=False)
    assert r.status_code == 303 and not denv.vault.practice("cabinet-a").frozen
    acts = audit_actions(denv)
    assert ("user:tech", "freeze", "cabinet-a", "ok") in acts
    assert ("user:tech", "release", "cabinet-a", "permission-denied") in acts
    assert ("user:admin", "release", "cabinet-a", "ok") in acts


def test_html_is_escaped_everywhere(denv: Env) -> None:
    with pytest.raises(UserError):
        vp.add_practice(denv.vault, "<script>alert(1)</script>", actor="test")
    evil = '<img src=x onerror=alert(1)>"\'&'
    vp.freeze(denv.vault, "cabinet-a", True, evil, actor="test")
    c = login(TestClient(denv.app), "admin", ADMIN_PW)
    for url in ("/ui/practices/cabinet-a", "/ui/audit"):
        html = c.get(url).text
        assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    r = c.get("/ui/practices/%3Cb%3Ebold%3Cb%3E%22")
    assert r.status_code == 404 and "<b>bold" not in r.text
    r = c.get("/ui/practices/%3Cscript%3Ealert(1)%3C%2Fscript%3E")
    assert r.status_code in (404, 405) and "<script>alert" not in r.text


def test_nothing_secret_on_pages(denv: Env) -> None:
    c = login(TestClient(denv.app), "admin", ADMIN_PW)
    html = c.get("/ui/practices/cabinet-a").text + c.get("/ui/audit").text + c.get("/ui/practices").text
    with denv.vault.engine.connect() as conn:
        hashes = [r.hash for r in conn.execute(sa.select(db.tokens.c.hash))]
        pw = [r.pw_hash for r in conn.execute(sa.select(t.users.c.pw_hash))]
    assert hashes and not any(h in html for h in hashes)
    assert not any(p.split("$")[-1] in html for p in pw)
    assert "rvt_" not in html


def test_logout_needs_csrf_and_ends_the_session(denv: Env) -> None:
    c = login(TestClient(denv.app), "admin", ADMIN_PW)
    tok = csrf_of(c.get("/ui/practices").text)
    assert c.post("/ui/logout", data={"csrf": "nope"}).status_code == 403
    assert c.get("/ui/practices", follow_redirects=False).status_code == 200
    assert c.post("/ui/logout", data={"csrf": tok}, follow_redirects=False).status_code == 303
    assert c.get("/ui/practices", follow_redirects=False).status_code == 303


def test_timeline_shows_verdicts_and_alerts(denv: Env) -> None:
    vp.report_run(denv.vault, denv.vault.practice("cabinet-a"), "failed", "SourceError", {}, actor="test")
    backup(denv.vault, "cabinet-a", verdict="suspicious",  # the agent's summary shape (detect.assess)
           findings={"counts": {"became_random": 12, "ransom_notes": 3, "clean": 0}, "rules": ["mass-encryption"],
                     "canaries": {"planted": 4, "tripped": 2}, "changed": 40, "deleted": 0, "clean_point": None})
    denv.watch.tick()
    c = login(TestClient(denv.app), "admin", ADMIN_PW)
    html = c.get("/ui/practices/cabinet-a").text
    assert "became_random: 12, ransom_notes: 3, rules: mass-encryption, canaries tripped: 2" in html
    assert "échec (2026-01-05 10:00:00) — SourceError" in html
    assert 'data-label="Fichiers nouveaux ou modifiés">7</td>' in html
    assert 'class="det det-suspicious">suspecte' in html
    assert "gel d&#39;incident" in html or "gel d'incident" in html
    assert html.count('class="v-suspicious"') == 1 and html.count('class="v-clean"') == 1
    en = c.get("/ui/lang/en", headers={"referer": "http://testserver/ui/practices/cabinet-a"})
    assert en.url.path == "/ui/practices/cabinet-a" and '<html lang="en">' in en.text and "suspicious" in en.text


def test_practice_page_shows_the_latest_restore_drill(denv: Env) -> None:
    from rempart.vault.watch.drills import DrillRecord, record_drill

    c = login(TestClient(denv.app), "tech", PROV_PW)
    page = c.get("/ui/practices/cabinet-a").text
    assert re.search(r'<dd id="last-drill">never done: run `rempart drill`</dd>', page)
    record_drill(denv.vault, denv.vault.practice("cabinet-a"),
                 DrillRecord("failed", snapshot="ab" * 32, error_class="IntegrityError"), actor="test")
    page = c.get("/ui/practices/cabinet-a").text
    assert re.search(r'<dd id="last-drill">failed \(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\) — IntegrityError</dd>', page)
    assert "restore drill failed" in page  # the red condition it opened, among the alerts
    record_drill(denv.vault, denv.vault.practice("cabinet-a"), DrillRecord("ok", snapshot="cd" * 32), actor="test")
    page = c.get("/ui/practices/cabinet-a").text
    assert re.search(r'<dd id="last-drill">passed \(', page) and "restore drill failed" not in page


def test_timeline_marks_a_snapshot_under_legal_hold_without_its_reason(denv: Env) -> None:
    held = backup(denv.vault, "cabinet-a")
    backup(denv.vault, "cabinet-a")
    vp.set_hold(denv.vault, "cabinet-a", held, True, "dossier 2026-77 Dupont", actor="test")
    c = login(TestClient(denv.app), "tech", PROV_PW)
    page = c.get("/ui/practices/cabinet-a").text
    assert page.count('<span class="hold">legal hold</span>') == 1
    assert "Dupont" not in page  # the case reference stays in the audit trail


def test_a_user_with_one_time_codes_needs_a_current_unused_code(denv: Env) -> None:
    from urllib.parse import parse_qs, urlparse

    from rempart.vault.dashboard import totp

    with denv.vault.engine.begin() as conn:
        uri = totp.enable(conn, "admin")
    secret = parse_qs(urlparse(uri).query)["secret"][0]
    assert uri.startswith("otpauth://totp/Rempart%20vault:admin?") and len(secret) == 32
    c = TestClient(denv.app)

    def attempt(code: str) -> int:
        token = csrf_of(c.get("/ui/login").text)
        return c.post("/ui/login", data={"username": "admin", "password": ADMIN_PW, "csrf": token, "code": code},
                      follow_redirects=False).status_code

    now = denv.vault.now()
    assert attempt("") == 401  # the password alone is no longer enough
    wrong = f"{(int(totp.code_at(secret, now)) + 1) % 10**6:06d}"
    assert attempt(wrong) == 401
    assert attempt(totp.code_at(secret, now - 120)) == 401  # four steps old
    denv.clock.advance(601)  # past the failed-login window (three failures block the address)
    good = totp.code_at(secret, denv.vault.now())
    assert attempt(good) == 303
    assert attempt(good) == 401  # single use: a replayed code is refused within its 30 seconds
    denv.clock.advance(30)
    assert attempt(totp.code_at(secret, denv.vault.now() - 30)) == 401  # the step before the used one's next
    assert attempt(totp.code_at(secret, denv.vault.now())) == 303  # ...but the next step's code works
    why = [json.loads(r.detail or "{}").get("why") for r in audit_rows(denv) if r.action == "ui.login"
           and r.outcome == "authentication-error"]
    assert "one-time code already used" in why and "wrong one-time code" in why
    assert all(secret not in str(r) for r in audit_rows(denv))
    # a provider without codes still signs in, unless the vault requires them of everyone
    login(TestClient(denv.app), "tech", PROV_PW)
    denv.app.state.dashboard.config = dataclasses.replace(denv.app.state.dashboard.config, require_totp=True)
    c2 = TestClient(denv.app)
    r = c2.post("/ui/login", data={"username": "tech", "password": PROV_PW, "csrf": csrf_of(c2.get("/ui/login").text)},
                follow_redirects=False)
    assert r.status_code == 401


def audit_rows(env: Env) -> list[Any]:
    with env.vault.engine.connect() as conn:
        return list(conn.execute(sa.select(db.audit).order_by(db.audit.c.seq)))


def test_under_the_two_person_rule_a_second_administrator_approves_a_release(denv: Env) -> None:
    cfg = denv.vault.config
    denv.vault.config = dataclasses.replace(cfg, limits=dataclasses.replace(cfg.limits, two_person=True))
    with denv.vault.engine.begin() as conn:
        auth.add_user(conn, "admin2", ADMIN_PW + " too", "admin", None, "en", denv.vault.now())
    vp.freeze(denv.vault, "cabinet-a", True, "odd files", actor="test")
    admin = login(TestClient(denv.app), "admin", ADMIN_PW)
    tok = csrf_of(admin.get("/ui/practices/cabinet-a").text)
    r = admin.post("/ui/practices/cabinet-a/release", data={"csrf": tok}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].endswith("done=requested")
    assert denv.vault.practice("cabinet-a").frozen  # only requested
    page = admin.get("/ui/approvals").text
    (aid,) = re.findall(r'action="/ui/approvals/([0-9a-f]{16})/approve"', page)
    r = admin.post(f"/ui/approvals/{aid}/approve", data={"csrf": tok})
    assert r.status_code == 403 and "un autre administrateur" in r.text  # not one's own request
    assert denv.vault.practice("cabinet-a").frozen
    tech = login(TestClient(denv.app), "tech", PROV_PW)
    assert tech.get("/ui/approvals").status_code == 403  # administrators only
    second = login(TestClient(denv.app), "admin2", ADMIN_PW + " too")
    tok2 = csrf_of(second.get("/ui/approvals").text)
    r = second.post(f"/ui/approvals/{aid}/approve", data={"csrf": tok2}, follow_redirects=False)
    assert r.status_code == 303 and not denv.vault.practice("cabinet-a").frozen
    assert ("user:admin+user:admin2", "release", "cabinet-a", "ok") in audit_actions(denv)
    assert "Nothing is waiting." in second.get("/ui/approvals").text
