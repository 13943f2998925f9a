"""One wheel of this checkout and one fresh virtualenv with it installed, for every test that
uses the package the way a user gets it (``tests/user``, ``tests/contrib``): built once per run;
and how those tests stop the worker processes they start.

The wheel is built from a copy of the files git tracks (plus untracked ones it does not ignore),
so nothing stale in the checkout (a build/ folder) leaks in and nothing is written into it. The
venv gets ``<wheel>[django,flask]`` (and another ``[django,flask,postgres,redis]``) from the
package index, never the checkout.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def clean_env() -> dict[str, str]:
    """The environment without this project's settings or interpreter paths."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAGAS_", "CELERY_"))}
    for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
        env.pop(name, None)
    return env


def _run(argv: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        argv, cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=timeout,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"{argv}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="session")
def built_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source")
    names: set[str] = set()
    for extra in ([], ["--others", "--exclude-standard"]):
        listed = _run(["git", "ls-files", "-z", *extra], ROOT, timeout=30)
        names.update(n for n in listed.stdout.split("\0") if n)
    for name in sorted(names):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(source)],
        out,
        timeout=300,
    )
    [found] = out.glob("celery_sagas-*.whl")
    return found


def _venv_with(built_wheel: Path, where: Path, extras: str) -> Path:
    venv.EnvBuilder(with_pip=True).create(where)
    python = str(where / "bin" / "python")
    _run([python, "-m", "pip", "install", "--quiet", f"{built_wheel}[{extras}]"], where, 600)
    return where / "bin"


@pytest.fixture(scope="session")
def wheel_venv(built_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the wheel and both framework extras only (no database driver
    nor broker client: what ``pip install "celery-sagas[django]"`` gives); its bin directory."""
    return _venv_with(built_wheel, tmp_path_factory.mktemp("venv"), "django,flask")


@pytest.fixture(scope="session")
def wheel_venv_services(built_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same with PostgreSQL's driver and Redis's client (``[...,postgres,redis]``)."""
    return _venv_with(
        built_wheel, tmp_path_factory.mktemp("venv-services"), "django,flask,postgres,redis"
    )


def stop_group(*procs: subprocess.Popen[Any]) -> None:
    """Stop processes started with ``start_new_session=True``, by process group: SIGTERM (a
    Celery worker's warm shutdown), SIGKILL after 20 s."""
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def spawn(argv: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen[str]:
    """Start a long-running process (a Celery worker) in its own session, its output in
    ``log``; stop it with ``stop_group``."""
    with log.open("w") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip
