"""Dashboard translations: one flat JSON file per language under ``locales/``; French default."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from pathlib import Path

LANGS = ("fr", "en")
DEFAULT = "fr"
_DIR = Path(__file__).parent / "locales"


@cache
def catalog(lang: str) -> dict[str, str]:
    data: dict[str, str] = json.loads((_DIR / f"{lang}.json").read_text(encoding="utf-8"))
    return data


def translator(lang: str) -> Callable[..., str]:
    cat = catalog(lang if lang in LANGS else DEFAULT)

    def t(key: str, **kw: object) -> str:
        text = cat.get(key, key)
        return text.format(**kw) if kw else text

    return t


def pick(cookie: str | None, accept: str | None, user_lang: str | None = None) -> str:
    if cookie in LANGS:
        return cookie  # type: ignore[return-value]
    if user_lang in LANGS:
        return user_lang  # type: ignore[return-value]
    for part in (accept or "").split(","):
        code = part.split(";")[0].strip().lower()[:2]
        if code in LANGS:
            return code
    return DEFAULT
