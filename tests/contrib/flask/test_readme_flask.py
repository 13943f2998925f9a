"""docs/flask.md's "Add sagas to your Flask project" files, written out as they are printed and run
(in subprocesses): ``flask saga db upgrade``, then a request that starts a saga in its own
transaction and one the typed error rejects. The broker is ``memory://`` (the page's ``create_app`` takes
``CELERY_BROKER_URL``), so no worker: ``test_flask_shop.py`` runs the same layout with one.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
HEADING = "# Add sagas to your Flask project"


def readme_files() -> dict[str, str]:
    text = (ROOT / "docs" / "flask.md").read_text()
    section = text.split(HEADING, 1)[1].split("\n## ", 1)[0]
    files = {}
    for block in re.findall(r"```python\n(.+?)\n```", section, re.S):
        first = block.splitlines()[0]
        match = re.match(r"# (shop/\w+\.py)", first)
        assert match, f"a python block in {HEADING!r} does not name its file: {first!r}"
        files[match.group(1)] = block + "\n"
    return files


def _run(root: Path, argv: list[str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAGAS_", "CELERY_", "FLASK_"))}
    env.update(PYTHONPATH=str(root), CELERY_BROKER_URL="memory://")
    return subprocess.run(
        argv, cwd=root, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_the_readme_flask_project_runs_as_written(tmp_path: Path) -> None:
    files = readme_files()
    assert sorted(files) == [
        "shop/__init__.py",
        "shop/celery_app.py",
        "shop/models.py",
        "shop/sagas.py",
        "shop/views.py",
    ]
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)

    flask = [sys.executable, "-m", "flask", "--app", "shop", "saga"]
    upgrade = _run(tmp_path, [*flask, "db", "upgrade"])
    assert upgrade.returncode == 0, upgrade.stderr
    assert f"(<Store sqlite:///{tmp_path}/instance/shop.db>)" in upgrade.stdout

    driver = _run(
        tmp_path,
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                """
                from celery.signals import before_task_publish
                from shop import create_app

                sent = []
                before_task_publish.connect(  # a step command: its saga id is in args[0]
                    lambda sender=None, body=None, **_: sent.append((sender, body[0][0]["saga_id"])),
                    weak=False,
                )
                client = create_app().test_client()
                ok = client.post("/orders", json={"order_id": "o1", "item": "book"})
                print(ok.status_code, ok.get_json(), sent)
                bad = client.post("/orders", json={"order_id": "o 2", "item": "book"})
                print(bad.status_code, bad.get_json(), len(sent))
                """
            ),
        ],
    )
    assert driver.returncode == 0, driver.stderr[-3000:]
    assert driver.stdout.splitlines() == [
        "202 {'saga_id': 'order-o1'} [('saga.shop_order.reserve', 'order-o1')]",
        "400 {'error': 'InvalidSagaId', 'field': 'saga_id'} 1",
    ]
    # The saga row was committed with the order (no worker ran: step 1 is still running).
    listed = _run(tmp_path, [*flask, "list"])
    assert listed.returncode == 0, listed.stderr
    rows = [line.split()[:3] for line in listed.stdout.splitlines()[2:]]
    assert rows == [["order-o1", "shop_order", "pending"]], listed.stdout
