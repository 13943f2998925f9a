"""The package as a user gets it: a wheel built from this checkout, installed (not editable)
into a fresh virtualenv, used from a directory that is not the checkout.

Guards what only shows from outside: the wheel holds the ``sagas`` package and nothing else
(an earlier wheel installed a top-level ``workers`` package over a user's own), carries its
license and migrations, and ``saga --version`` / ``saga demo`` work with no servers.
"""

from __future__ import annotations

import os
import subprocess
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(argv: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAGAS_", "CELERY_"))}
    env.pop("PYTHONPATH", None)
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_the_wheel_holds_only_the_library(built_wheel: Path) -> None:
    names = zipfile.ZipFile(built_wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    # sagas, and the pytest11 entry point kept outside it so that loading it imports nothing.
    assert top == {"sagas", "pytest_sagas.py"}
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "sagas/store/migrations/versions/0001_saga_tables.py" in names
    assert "sagas/store/migrations/script.py.mako" in names
    assert "sagas/py.typed" in names


def test_saga_version_and_demo_from_a_plain_install(wheel_venv: Path, tmp_path: Path) -> None:
    installed = wheel_venv
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
