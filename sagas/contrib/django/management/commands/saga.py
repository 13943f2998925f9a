"""``manage.py saga <command> ...``: every ``saga`` CLI command, on this project's database.

    manage.py saga db upgrade              # create/upgrade the saga tables (sagas' own Alembic)
    manage.py saga list --state failed
    manage.py saga show ID
    manage.py saga retry ID --reason "card fixed"
    manage.py saga cancel ID --reason "customer cancelled"

The store is the one ``sagas.contrib.django.settings()`` names (by default the project's
``DATABASES["default"]``); operator commands publish with the project's Celery app
(``SAGAS_CELERY_APP``, else the app ``proj/celery.py`` created). Exit statuses and one-line
``error: ...`` messages are the CLI's. ``manage.py saga --help`` lists the commands.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import connections

from ...cli import run

# Django's own options, which ``manage.py`` has already applied before this command runs.
DJANGO_OPTIONS = ("--settings", "--pythonpath")


class Command(BaseCommand):  # type: ignore[misc]  # Django is untyped
    help = "Run a `saga` CLI command (list, show, retry, cancel, db upgrade, ...) on this project."
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("saga_args", nargs=argparse.REMAINDER, help="saga CLI arguments")

    def run_from_argv(self, argv: list[str]) -> None:
        # Every argument after "saga" belongs to the saga CLI (its own --help included), so
        # Django's argument parser is bypassed; only --settings/--pythonpath are dropped.
        code = run(_without_django_options(argv[2:]), prog_name=f"{_prog(argv[0])} saga")
        connections.close_all()
        if code:
            sys.exit(code)

    def handle(self, *args: Any, **options: Any) -> None:
        # call_command("saga", "list", ...)
        code = run([*args, *options.get("saga_args", [])])
        if code:
            raise CommandError(f"saga exited with status {code}", returncode=code)


def _prog(path: str) -> str:
    return os.path.basename(path) or "manage.py"


def _without_django_options(args: list[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in DJANGO_OPTIONS:
            skip = True
        elif not arg.startswith(tuple(f"{o}=" for o in DJANGO_OPTIONS)):
            out.append(arg)
    return out
