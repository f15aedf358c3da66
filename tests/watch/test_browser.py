"""Browser tests: real headless Chromium (Debian package) driven by Playwright against the vault's
dashboard served by uvicorn in this process (fake clock, so "late" is reached without waiting).
Screenshots go to artifacts/ (gitignored). Never runs ``playwright install``."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from watch_helpers import Env, backup, make_env

from rempart.testing.servers import free_ports
from rempart.vault.dashboard import auth

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "watch"
PW = "correct horse battery staple"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Env, str]]:
    env = make_env(tmp_path)
    env.add("cabinet-dupont", provider="infogarde")
    env.add("cabinet-martin", provider="infogarde")
    backup(env.vault, "cabinet-dupont", files=4210, nbytes=38_000_000_000)
    backup(env.vault, "cabinet-martin", files=980, nbytes=4_200_000_000)
    with env.vault.engine.begin() as conn:
        auth.add_user(conn, "admin", PW, "admin", None, "fr", env.vault.now())
    (port,) = free_ports(1)
    server = uvicorn.Server(uvicorn.Config(env.app, host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield env, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        th.join(timeout=10)


@pytest.fixture
def page() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is missing: apt-get install -y chromium (see .ci/install-system.sh)", pytrace=False)
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            ctx = browser.new_context(viewport={"width": 1280, "height": 800}, locale="fr-FR")
            yield ctx.new_page()
        finally:
            browser.close()


def luminance(rgb: str) -> float:
    r, g, b = (int(x) / 255 for x in re.findall(r"\d+", rgb)[:3])

    def ch(c: float) -> float:
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    return 0.2126 * ch(r) + 0.7152 * ch(g) + 0.0722 * ch(b)


def contrast(fg: str, bg: str) -> float:
    a, b = sorted((luminance(fg), luminance(bg)), reverse=True)
    return (a + 0.05) / (b + 0.05)


def check_accessibility(page: object) -> None:
    p: object = page
    assert p.evaluate("document.documentElement.lang") in ("fr", "en")  # type: ignore[attr-defined]
    unlabelled = p.evaluate("""() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
        .filter(e => !(e.id && document.querySelector(`label[for="${e.id}"]`)) && !e.getAttribute('aria-label'))
        .map(e => e.outerHTML)""")  # type: ignore[attr-defined]
    assert unlabelled == []
    # keyboard: every focusable control is reached by pressing Tab
    wanted = p.evaluate("""() => [...document.querySelectorAll('a[href], button, input:not([type=hidden])')]
        .filter(e => e.offsetParent !== null || e.classList.contains('skip')).length""")  # type: ignore[attr-defined]
    p.evaluate("document.activeElement && document.activeElement.blur()")  # type: ignore[attr-defined]
    seen = set()
    for _ in range(wanted + 3):
        p.keyboard.press("Tab")  # type: ignore[attr-defined]
        seen.add(p.evaluate("(() => { const e = document.activeElement; "  # type: ignore[attr-defined]
                            "return e ? e.outerHTML.slice(0, 200) : '' })()"))
    seen.discard("")
    seen.discard(p.evaluate("document.body.outerHTML.slice(0, 200)"))  # type: ignore[attr-defined]
    assert len(seen) >= wanted, f"only {len(seen)} of {wanted} focusable controls reached with Tab"


def light_of(page: object, practice: str) -> str:
    return page.get_attribute(f'tr[data-practice="{practice}"]', "data-light")  # type: ignore[attr-defined,no-any-return]


def test_login_late_turns_red_timeline_freeze_release(served: tuple[Env, str], page: object) -> None:
    env, url = served
    p: object = page
    p.goto(f"{url}/ui/login")  # type: ignore[attr-defined]
    check_accessibility(p)
    p.fill("#username", "admin")  # type: ignore[attr-defined]
    p.fill("#password", PW)  # type: ignore[attr-defined]
    p.click("button[type=submit]")  # type: ignore[attr-defined]
    p.wait_for_url(f"{url}/ui/practices")  # type: ignore[attr-defined]
    assert light_of(p, "cabinet-dupont") == "green" and light_of(p, "cabinet-martin") == "green"
    check_accessibility(p)
    for light in ("green",):
        el = p.query_selector(f".light-{light}")  # type: ignore[attr-defined]
        fg, bg = el.evaluate("e => [getComputedStyle(e).color, getComputedStyle(e).backgroundColor]")
        assert contrast(fg, bg) >= 4.5, (light, fg, bg)
    p.screenshot(path=str(ARTIFACTS / "1-practices-green.png"), full_page=True)  # type: ignore[attr-defined]

    # cabinet-dupont stops backing up; cabinet-martin keeps going
    env.clock.advance(3600 + 700)
    backup(env.vault, "cabinet-martin")
    env.watch.tick()
    p.reload()  # type: ignore[attr-defined]
    assert light_of(p, "cabinet-dupont") == "orange" and light_of(p, "cabinet-martin") == "green"
    env.clock.advance(3 * 3600)
    backup(env.vault, "cabinet-martin")
    env.watch.tick()
    p.reload()  # type: ignore[attr-defined]
    assert light_of(p, "cabinet-dupont") == "red" and light_of(p, "cabinet-martin") == "green"
    row = p.inner_text('tr[data-practice="cabinet-dupont"]')  # type: ignore[attr-defined]
    assert "manquante" in row and "il y a 4 h" in row
    for light in ("green", "red"):
        el = p.query_selector(f".light-{light}")  # type: ignore[attr-defined]
        fg, bg = el.evaluate("e => [getComputedStyle(e).color, getComputedStyle(e).backgroundColor]")
        assert contrast(fg, bg) >= 4.5, (light, fg, bg)
    p.screenshot(path=str(ARTIFACTS / "2-practices-red.png"), full_page=True)  # type: ignore[attr-defined]

    # its timeline
    p.click('a[href="/ui/practices/cabinet-dupont"]')  # type: ignore[attr-defined]
    p.wait_for_url(f"{url}/ui/practices/cabinet-dupont")  # type: ignore[attr-defined]
    assert p.locator("#timeline tbody tr").count() == 1  # type: ignore[attr-defined]
    assert "manquante" in p.inner_text("#alerts")  # type: ignore[attr-defined]
    check_accessibility(p)
    p.screenshot(path=str(ARTIFACTS / "3-timeline.png"), full_page=True)  # type: ignore[attr-defined]

    # freeze, then release
    p.fill("#reason", "poste infecté ?")  # type: ignore[attr-defined]
    p.click("#freeze")  # type: ignore[attr-defined]
    p.wait_for_selector("#release")  # type: ignore[attr-defined]
    assert env.vault.practice("cabinet-dupont").frozen
    assert "Le cabinet est gelé." in p.inner_text("main")  # type: ignore[attr-defined]
    p.screenshot(path=str(ARTIFACTS / "4-frozen.png"), full_page=True)  # type: ignore[attr-defined]
    p.click("#release")  # type: ignore[attr-defined]
    p.wait_for_selector("#freeze")  # type: ignore[attr-defined]
    assert not env.vault.practice("cabinet-dupont").frozen
    p.goto(f"{url}/ui/audit")  # type: ignore[attr-defined]
    audit = p.inner_text("#audit")  # type: ignore[attr-defined]
    assert "freeze" in audit and "release" in audit and "user:admin" in audit


def test_phone_layout_and_english(served: tuple[Env, str], page: object) -> None:
    env, url = served
    p: object = page
    p.set_viewport_size({"width": 390, "height": 844})  # type: ignore[attr-defined]
    p.goto(f"{url}/ui/login")  # type: ignore[attr-defined]
    p.click("text=English")  # type: ignore[attr-defined]
    p.wait_for_url(f"{url}/ui/login")  # type: ignore[attr-defined]
    assert p.evaluate("document.documentElement.lang") == "en"  # type: ignore[attr-defined]
    p.fill("#username", "admin")  # type: ignore[attr-defined]
    p.fill("#password", PW)  # type: ignore[attr-defined]
    p.click("button[type=submit]")  # type: ignore[attr-defined]
    p.wait_for_url(f"{url}/ui/practices")  # type: ignore[attr-defined]
    env.clock.advance(2 * 3600)
    env.watch.tick()
    p.reload()  # type: ignore[attr-defined]
    assert "2 h 0 min ago" in p.inner_text('tr[data-practice="cabinet-dupont"]')  # type: ignore[attr-defined]
    width = p.evaluate("document.documentElement.scrollWidth")  # type: ignore[attr-defined]
    assert width <= 390, f"horizontal scrolling on a phone ({width}px)"
    el = p.query_selector(".light-orange")  # type: ignore[attr-defined]
    fg, bg = el.evaluate("e => [getComputedStyle(e).color, getComputedStyle(e).backgroundColor]")
    assert contrast(fg, bg) >= 4.5, ("orange", fg, bg)
    p.screenshot(path=str(ARTIFACTS / "5-phone-en.png"), full_page=True)  # type: ignore[attr-defined]
