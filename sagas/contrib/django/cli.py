"""``manage.py saga ...``: the ``saga`` CLI with this Django project's settings and Celery app."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from ...cli import main
from ...errors import ConfigurationError
from .conf import APP_SETTING, CURRENT_APP_PATH, celery_app_path, environment, settings


def run(args: Sequence[str], *, prog_name: str = "manage.py saga") -> int:
    """Run ``saga <args>`` (every command of the ``saga`` CLI) against the store and Celery app
    of this project; return its exit status. The CLI reads its configuration from the
    environment, so the Django-derived settings are handed to it as ``SAGAS_<NAME>`` variables
    (and ``SAGAS_CELERY_APP``) for the duration of the call."""
    try:
        env = environment(settings())
    except ConfigurationError as exc:
        print(f"error: bad configuration: {exc}", file=sys.stderr)
        return 2
    env[APP_SETTING] = celery_app_path() or CURRENT_APP_PATH
    with _environment(env):
        try:
            main.main(args=list(args), prog_name=prog_name, standalone_mode=True)
        except SystemExit as exc:
            code = exc.code
            return code if isinstance(code, int) else 0 if code is None else 1
    return 0


@contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old
