"""The lazy runtime, from a process nobody configured (a web process that only imports
``start_saga``): built once, from any thread, without hanging. Each case runs in a fresh
interpreter with a timeout, so a deadlock fails the test instead of stalling the suite."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=tmp_path,  # outside the checkout: nothing configures sagas behind our back
        env={"PATH": "/usr/bin:/bin", "SAGAS_DATABASE_URL": f"sqlite:///{tmp_path / 's.db'}"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_get_runtime_builds_one_from_the_environment(tmp_path: Path) -> None:
    result = _run(
        """
        import sagas.runtime as r
        rt = r.get_runtime()
        assert rt is r.get_runtime()
        print(rt.store.url)
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"sqlite:///{tmp_path / 's.db'}"


def test_many_threads_at_once_get_the_same_runtime(tmp_path: Path) -> None:
    result = _run(
        """
        import threading
        import sagas.runtime as r
        seen, start = [], threading.Barrier(16)
        def ask():
            start.wait()
            seen.append(id(r.get_runtime()))
        threads = [threading.Thread(target=ask) for _ in range(16)]
        for t in threads: t.start()
        for t in threads: t.join(20)
        print(len(seen), len(set(seen)))
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["16", "1"]


def test_importing_start_saga_alone_validates_without_configure(tmp_path: Path) -> None:
    """The README's web path: import ``start_saga``, never call ``configure``. A payload for a
    saga this process declared is validated in the caller (needs the lazy runtime's settings)."""
    result = _run(
        """
        from pydantic import BaseModel
        from sagas import PayloadInvalid, Saga, start_saga

        class Order(BaseModel):
            n: int

        demo = Saga("lazy_demo", payload=Order)
        demo.remote_step("one", task="svc.one", queue="svc", compensation=None)
        try:
            start_saga.delay("lazy_demo", {"n": "not a number"})
        except PayloadInvalid as exc:
            print("rejected", exc.field)
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["rejected", "payload.n"]
