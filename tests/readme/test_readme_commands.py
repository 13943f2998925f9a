"""The README's demo command, run as a new user would: in a fresh clone, with a fresh venv.

(The README's other command, `bash scripts/test`, is what CI runs on a clean clone; running it
from inside the suite would recurse.)
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def readme_command(heading: str) -> str:
    text = (ROOT / "README.md").read_text()
    after = text.split(heading, 1)[1]
    match = re.search(r"```sh\n(.+?)\n```", after, re.S)
    assert match, f"no sh block after {heading!r} in README.md"
    return match.group(1).strip()


def test_readme_names_both_commands() -> None:
    assert readme_command("Run the demo").endswith("saga demo")
    assert readme_command("Run the test suite") == "bash scripts/test"
    assert "bash scripts/test" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.timeout(600)
def test_demo_command_works_in_a_fresh_clone(tmp_path: Path) -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    clone = tmp_path / "sagas"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("SAGAS_DATABASE_URL", "CELERY_BROKER_URL", "VIRTUAL_ENV", "PYTHONPATH")
    }
    result = subprocess.run(
        ["bash", "-c", readme_command("Run the demo")],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    out = result.stdout
    assert "embedded mode" in out
    assert out.count("state=completed") == 2 and out.count("state=failed") == 1
    assert "step_compensated         reserve_inventory" in out
