"""Wording of alert notifications, in French (default) and English. Plain text, no markup: the
practice name is the only free text and it goes in as is (mail bodies are text/plain)."""

from __future__ import annotations

from typing import Any

LANGS = ("fr", "en")

LEVEL = {
    "fr": {"late": "sauvegarde en retard", "missing": "sauvegarde manquante", "failed": "sauvegarde en échec",
           "suspicious": "sauvegarde suspecte (possible attaque)", "quota": "espace de stockage presque plein",
           "frozen": "gel d'incident en cours", "drill": "exercice de restauration en échec",
           "damage": "sauvegardes abîmées dans le coffre", "closed": "cabinet clôturé"},
    "en": {"late": "backup late", "missing": "backup missing", "failed": "backup failed",
           "suspicious": "suspicious backup (possible attack)", "quota": "storage almost full",
           "frozen": "incident freeze in place", "drill": "restore drill failed",
           "damage": "damaged backups in the vault", "closed": "practice closed"},
}

EVENT = {
    "fr": {"opened": "ALERTE", "worsened": "AGGRAVATION", "escalated": "ESCALADE", "reminder": "RAPPEL",
           "resolved": "RÉSOLU", "closed": "CLÔTURE"},
    "en": {"opened": "ALERT", "worsened": "WORSE", "escalated": "ESCALATED", "reminder": "REMINDER",
           "resolved": "RESOLVED", "closed": "CLOSED"},
}

ADVICE = {
    "fr": {
        "late": "Aucune sauvegarde n'est arrivée au coffre à l'heure prévue. Vérifiez que le poste de "
                "sauvegarde est allumé et connecté.",
        "missing": "Aucune sauvegarde n'est arrivée depuis longtemps. Vos données ne sont plus protégées : "
                   "contactez votre prestataire informatique.",
        "failed": "L'agent de sauvegarde a signalé un échec. Consultez son journal ou votre prestataire.",
        "suspicious": "La dernière sauvegarde ressemble à des fichiers chiffrés par un rançongiciel. "
                      "N'éteignez rien, débranchez le poste du réseau et appelez votre prestataire. Les "
                      "sauvegardes sont gelées : aucune ne sera supprimée.",
        "quota": "L'espace de stockage réservé au cabinet est presque plein. Rien ne sera supprimé pour "
                 "faire de la place : demandez une augmentation du quota.",
        "frozen": "Le coffre est en gel d'incident : aucune sauvegarde ne sera supprimée jusqu'à la levée.",
        "drill": "Le dernier exercice de restauration n'a pas pu relire une sauvegarde (données manquantes ou "
                 "abîmées). Rien n'est supprimé ; votre prestataire doit vérifier le coffre (rempart check) et "
                 "refaire l'exercice.",
        "damage": "La vérification du coffre a trouvé des données de sauvegarde abîmées ou manquantes. Rien "
                  "n'est supprimé ; le prestataire du coffre doit les restaurer depuis sa copie.",
        "resolved": "La situation est revenue à la normale.",
        "closed": "Le contrat de ce cabinet avec le coffre est clos : ses jetons sont révoqués et aucune "
                  "sauvegarde n'est plus reçue. Ses données seront effacées du coffre à partir de la date "
                  "ci-dessus ; d'ici là, demandez un jeton de restauration pour les récupérer (rempart mirror). "
                  "Si personne au cabinet ne l'a demandé, appelez tout de suite le prestataire du coffre.",
    },
    "en": {
        "late": "No backup reached the vault when expected. Check that the backup PC is on and online.",
        "missing": "No backup has arrived for a long time. Your data is no longer protected: call your "
                   "IT provider.",
        "failed": "The backup agent reported a failure. Check its log or call your IT provider.",
        "suspicious": "The latest backup looks like files encrypted by ransomware. Do not switch anything "
                      "off, unplug the PC from the network and call your IT provider. Backups are frozen: "
                      "none will be deleted.",
        "quota": "The practice's storage space is almost full. Nothing will be deleted to make room: ask "
                 "for a larger quota.",
        "frozen": "The vault is under incident freeze: no backup will be deleted until it is released.",
        "drill": "The latest restore drill could not read a backup back (missing or damaged data). Nothing is "
                 "deleted; your IT provider must check the vault (rempart check) and run the drill again.",
        "damage": "The vault's scrub found damaged or missing backup data. Nothing is deleted; the backup "
                  "provider must restore it from its replica.",
        "resolved": "Things are back to normal.",
        "closed": "This practice's contract with the vault has ended: its tokens are revoked and no backup "
                  "is received any more. Its data will be erased from the vault from the date above on; "
                  "until then, ask for a restore token to take it (rempart mirror). If nobody at the practice "
                  "asked for this, call the vault's provider at once.",
    },
}


def lang_of(value: str | None) -> str:
    return value if value in LANGS else "fr"


def alert_mail(payload: dict[str, Any], lang: str) -> tuple[str, str]:
    """(subject, body) of one alert notification."""
    lang = lang_of(lang)
    event = payload["event"]
    level = payload["level"]
    practice = payload["practice"]
    what = LEVEL[lang].get(level, level)
    subject = f"[Rempart] {EVENT[lang].get(event, event)} {practice}: {what}"
    lines = [
        f"{'Cabinet' if lang == 'fr' else 'Practice'}: {practice}",
        f"{'État' if lang == 'fr' else 'State'}: {what}",
        f"{'Heure (UTC)' if lang == 'fr' else 'Time (UTC)'}: {payload['time']}",
    ]
    detail = payload.get("detail") or {}
    if detail.get("hours_without_backup") is not None:
        lines.append(f"{'Heures sans sauvegarde' if lang == 'fr' else 'Hours without a backup'}: "
                     f"{detail['hours_without_backup']}")
    if detail.get("percent") is not None:
        lines.append(f"{'Espace utilisé' if lang == 'fr' else 'Space used'}: {detail['percent']} %")
    if detail.get("objects") is not None:
        lines.append(f"{'Objets abîmés' if lang == 'fr' else 'Damaged objects'}: {detail['objects']}")
    if detail.get("erase_after"):
        lines.append(f"{'Effacement à partir du (UTC)' if lang == 'fr' else 'Erased from (UTC)'}: "
                     f"{detail['erase_after']}")
    if detail.get("error_class"):
        lines.append(f"{'Erreur' if lang == 'fr' else 'Error'}: {detail['error_class']}")
    lines.append("")
    lines.append(ADVICE[lang]["resolved" if event == "resolved" else level] if level in ADVICE[lang]
                 or event == "resolved" else "")
    if event == "reminder":
        lines.append("")
        lines.append("Rappel : cette alerte est toujours ouverte." if lang == "fr" else
                     "Reminder: this alert is still open.")
    if event == "escalated":
        lines.append("")
        lines.append("Cette alerte n'a pas été résolue à temps ; elle vous est transmise en tant que prestataire."
                     if lang == "fr" else
                     "This alert was not resolved in time; it is passed on to you as the IT provider.")
    if payload.get("link"):
        lines += ["", payload["link"]]
    lines += ["", "-- ", "Rempart"]
    return subject, "\n".join(lines) + "\n"
