"""The package as a user gets it: a wheel built from this checkout, installed (not editable)
into a fresh virtualenv, used from a directory that is not the checkout.

Guards what only shows from outside: the wheel holds the ``sagas`` package and nothing else
(an earlier wheel installed a top-level ``workers`` package over a user's own), carries its
license and migrations, and ``saga --version`` / ``saga demo`` work with no servers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(argv: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAGAS_", "CELERY_"))}
    env.pop("PYTHONPATH", None)
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # Built from a copy of the tracked sources: a build/ left in the checkout could leak stale
    # files into the wheel, and the build must not write into the checkout either.
    tracked = _run(["git", "ls-files"], ROOT).stdout.split()
    source = tmp_path_factory.mktemp("source")
    for name in tracked:
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(source)],
        cwd=out,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    [found] = out.glob("celery_sagas-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv with the wheel installed; yields its bin directory."""
    env_dir = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=True).create(env_dir)
    pip = _run(
        [str(env_dir / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)], env_dir
    )
    assert pip.returncode == 0, pip.stderr[-3000:]
    yield env_dir / "bin"


def test_the_wheel_holds_only_the_library(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"sagas"}
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "sagas/store/migrations/versions/0001_saga_tables.py" in names
    assert "sagas/store/migrations/script.py.mako" in names
    assert "sagas/py.typed" in names


def test_saga_version_and_demo_from_a_plain_install(installed: Path, tmp_path: Path) -> None:
    (tmp_path / "workers").mkdir()
    (tmp_path / "workers" / "__init__.py").write_text("MINE = True\n")  # a user's own package
    version = _run([str(installed / "saga"), "--version"], tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("saga, version "), version.stderr
    demo = _run([str(installed / "saga"), "demo"], tmp_path, timeout=180)
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert demo.stdout.count("completed") >= 2 and "failed" in demo.stdout
    assert (tmp_path / "workers" / "__init__.py").read_text() == "MINE = True\n"
    probe = _run(
        [
            str(installed / "python"),
            "-c",
            "import sagas, importlib.util as u; print(u.find_spec('workers'))",
        ],
        tmp_path.parent,
    )
    assert probe.stdout.strip() == "None"  # nothing called workers was installed
