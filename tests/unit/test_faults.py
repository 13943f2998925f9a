from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from sagas import faults


@pytest.fixture(autouse=True)
def disarm() -> Iterator[None]:
    yield
    faults.arm("")


def test_unarmed_points_do_nothing() -> None:
    for point in faults.POINTS:
        faults.hit(point)


def test_raise_fires_the_given_number_of_times_only() -> None:
    faults.arm("coordinator.after_commit=raise:2")
    for _ in range(2):
        with pytest.raises(faults.InjectedFault, match="coordinator.after_commit"):
            faults.hit("coordinator.after_commit")
    faults.hit("coordinator.after_commit")  # third time: spent
    faults.hit("participant.before_reply")  # other points stay inert


@pytest.mark.parametrize(
    "spec, message",
    [("nowhere=raise", "unknown fault point"), ("sweeper.after_select=explode", "unknown action")],
)
def test_bad_specs_are_rejected(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        faults.arm(spec)


def test_kill_really_kills_the_process() -> None:
    code = "from sagas import faults; faults.hit('participant.after_effect'); print('survived')"
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={"SAGAS_FAULTS": "participant.after_effect=kill", "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == -9 and "survived" not in result.stdout
