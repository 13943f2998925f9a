"""The testing kit from where a user stands: a project in a temporary directory, with its own
saga module and Celery app, runs pytest with the fixtures of the installed wheel (not the
checkout). Its files are the README's "Testing your sagas" blocks, verbatim.

Also: without ``sagas = true`` the entry point loads nothing (no fixtures, ``sagas`` never
imported), which is why auto-loading it into every pytest run is harmless.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.wheelhouse import ROOT, clean_env, spawn, stop_group

pytestmark = pytest.mark.workers


def _readme_blocks() -> dict[str, str]:
    text = (ROOT / "README.md").read_text().split("## Testing your sagas", 1)[1]
    text = text.split("\n## ", 1)[0]
    blocks = re.findall(r"```(toml|python)\n(.+?)\n```", text, re.S)
    found = {}
    for _, body in blocks:
        first = body.splitlines()[0]
        if first.startswith("# ") and "/" in first or first.startswith("# pyproject"):
            found[first[2:].strip()] = body + "\n"
    return found


def _pytest(bin_dir: Path, project: Path, log: Path, timeout: float = 300) -> str:
    proc = spawn(
        [str(bin_dir / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        project,
        clean_env(),
        log,
    )
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        stop_group(proc)
        raise
    return log.read_text()


@pytest.fixture(scope="module")
def kit_venv(wheel_venv: Path) -> Path:
    # The user's own test dependency (the wheel does not need pytest to run sagas).
    subprocess.run(
        [str(wheel_venv / "python"), "-m", "pip", "install", "--quiet", "pytest>=8"],
        env=clean_env(),
        check=True,
        capture_output=True,
        timeout=300,
    )
    return wheel_venv


def test_a_user_project_tests_its_saga_with_the_installed_plugin(
    kit_venv: Path, tmp_path: Path
) -> None:
    blocks = _readme_blocks()
    assert {"pyproject.toml", "shop/checkout.py", "tests/test_checkout.py"} <= blocks.keys()
    project = tmp_path / "shop-project"
    for name, body in blocks.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(body)
    (project / "shop" / "__init__.py").write_text("")
    out = _pytest(kit_venv, project, tmp_path / "pytest.log")
    assert re.search(r"\b3 passed\b", out), out[-4000:]
    where = subprocess.run(
        [str(kit_venv / "python"), "-c", "import sagas.testing.plugin as p; print(p.__file__)"],
        cwd=project,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert where.stdout.startswith(str(kit_venv.parent)), where  # the wheel's, not the checkout


def test_without_the_ini_option_the_entry_point_loads_nothing(
    kit_venv: Path, tmp_path: Path
) -> None:
    project = tmp_path / "other-project"
    (project / "tests").mkdir(parents=True)
    (project / "tests" / "test_plain.py").write_text(
        "import sys\n\n\n"
        "def test_sagas_not_imported():\n"
        "    assert 'sagas' not in sys.modules\n\n\n"
        "def test_no_fixtures(saga_runtime):\n"
        "    pass\n"
    )
    out = _pytest(kit_venv, project, tmp_path / "pytest.log")
    assert "1 passed" in out and "1 error" in out, out[-3000:]
    assert "fixture 'saga_runtime' not found" in out
