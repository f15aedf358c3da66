"""Per-practice watch settings (IT provider, contacts, language, expectation overrides) and
IT provider contacts, stored in the watch tables and changed through the CLI."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from rempart.core.errors import UserError
from rempart.vault.watch import tables as t
from rempart.vault.watch.config import WatchConfig
from rempart.vault.watch.schedule import Expectation, parse_days, parse_hours, zone

EMAIL = re.compile(r"^[^@\s<>\"',;]{1,64}@[A-Za-z0-9.-]{1,190}$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,63}$")
EXPECTATION_KEYS = ("every", "grace", "missing_after", "max_gap", "hours", "days", "tz")


@dataclass(frozen=True)
class PracticeWatch:
    provider: str | None
    contacts: tuple[str, ...]
    lang: str
    overrides: dict[str, Any]
    reports: bool


def check_emails(addresses: list[str]) -> list[str]:
    for a in addresses:
        if not EMAIL.match(a):
            raise UserError(f"not an e-mail address: {a[:80]!r}")
    return addresses


def check_provider(name: str) -> str:
    if not NAME.match(name):
        raise UserError("an IT provider name is 1-64 letters, digits, spaces, dots, dashes or underscores")
    return name


def default_expectation(cfg: WatchConfig) -> Expectation:
    return Expectation(every=cfg.every_seconds, grace=cfg.grace_seconds, missing_after=cfg.missing_after_seconds,
                       max_gap=cfg.max_gap_seconds, hours=parse_hours(cfg.open_hours),
                       days=parse_days(cfg.open_days), tz=cfg.timezone)


def expectation(cfg: WatchConfig, overrides: dict[str, Any]) -> Expectation:
    base = default_expectation(cfg)
    kw: dict[str, Any] = {}
    for k in ("every", "grace", "missing_after", "max_gap"):
        if k in overrides:
            kw[k] = float(overrides[k])
    if "hours" in overrides:
        kw["hours"] = parse_hours(str(overrides["hours"]))
    if "days" in overrides:
        kw["days"] = parse_days(str(overrides["days"]))
    if "tz" in overrides:
        zone(str(overrides["tz"]))
        kw["tz"] = str(overrides["tz"])
    return Expectation(**{**base.__dict__, **kw})


def validate_overrides(raw: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in raw.items():
        if k not in EXPECTATION_KEYS:
            raise UserError(f"unknown expectation key {k!r}")
        if k in ("every", "grace", "missing_after", "max_gap"):
            try:
                f = float(v)
            except (TypeError, ValueError) as exc:
                raise UserError(f"{k} must be a number of seconds") from exc
            if f < 0 or (k == "every" and f <= 0):
                raise UserError(f"{k} must be a positive number of seconds")
            out[k] = f
        else:
            out[k] = str(v)
    exp_check = {**out}
    if "hours" in exp_check:
        parse_hours(exp_check["hours"])
    if "days" in exp_check:
        parse_days(exp_check["days"])
    if "tz" in exp_check:
        zone(exp_check["tz"])
    return out


def get(conn: Connection, practice_id: int) -> PracticeWatch:
    row = conn.execute(sa.select(t.settings).where(t.settings.c.practice_id == practice_id)).first()
    if row is None:
        return PracticeWatch(None, (), "fr", {}, True)
    return PracticeWatch(row.provider, tuple(json.loads(row.contacts or "[]")), row.lang or "fr",
                         json.loads(row.expectation or "{}"), bool(row.reports))


def put(conn: Connection, practice_id: int, *, provider: str | None = None, contacts: list[str] | None = None,
        lang: str | None = None, overrides: dict[str, Any] | None = None, reports: bool | None = None) -> PracticeWatch:
    cur = get(conn, practice_id)
    if lang is not None and lang not in ("fr", "en"):
        raise UserError("language must be fr or en")
    new = PracticeWatch(
        provider=(check_provider(provider) if provider else None) if provider is not None else cur.provider,
        contacts=tuple(check_emails(contacts)) if contacts is not None else cur.contacts,
        lang=lang or cur.lang,
        overrides={**cur.overrides, **validate_overrides(overrides)} if overrides is not None else cur.overrides,
        reports=cur.reports if reports is None else reports,
    )
    values = dict(provider=new.provider, contacts=json.dumps(list(new.contacts)), lang=new.lang,
                  expectation=json.dumps(new.overrides), reports=new.reports)
    if conn.execute(sa.select(t.settings.c.practice_id).where(t.settings.c.practice_id == practice_id)).first():
        conn.execute(t.settings.update().where(t.settings.c.practice_id == practice_id).values(**values))
    else:
        conn.execute(t.settings.insert().values(practice_id=practice_id, **values))
    return new


def provider_contacts(conn: Connection, name: str | None) -> tuple[tuple[str, ...], str]:
    if not name:
        return (), "fr"
    row = conn.execute(sa.select(t.providers).where(t.providers.c.name == name)).first()
    if row is None:
        return (), "fr"
    return tuple(json.loads(row.contacts or "[]")), row.lang or "fr"


def put_provider(conn: Connection, name: str, contacts: list[str], lang: str = "fr") -> None:
    check_provider(name)
    check_emails(contacts)
    if lang not in ("fr", "en"):
        raise UserError("language must be fr or en")
    values = dict(contacts=json.dumps(contacts), lang=lang)
    if conn.execute(sa.select(t.providers.c.name).where(t.providers.c.name == name)).first():
        conn.execute(t.providers.update().where(t.providers.c.name == name).values(**values))
    else:
        conn.execute(t.providers.insert().values(name=name, **values))
