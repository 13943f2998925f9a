"""Named fault points for the fault-injection suite; inert unless test configuration arms them.

``SAGAS_FAULTS`` holds ``point=action`` pairs separated by commas, for example
``coordinator.after_commit=kill`` or ``participant.before_reply=raise:1`` (only the first time).
Actions: ``kill`` (SIGKILL this process: a crash with no cleanup), ``exit`` (os._exit(1)),
``raise`` (``InjectedFault``), ``sleep:<seconds>``. ``<action>:<n>`` fires only the first n times
in each process. Production never sets the variable; ``hit`` then costs one dict lookup.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable

POINTS = (
    "coordinator.after_commit",  # transition committed, commands not yet published
    "coordinator.after_publish",  # commands published, outbox not yet cleared
    "coordinator.start_after_commit",  # a new saga's row committed, first command not published
    "participant.after_effect",  # the step ran, its outcome not yet reported or applied
    "participant.before_reply",  # about to send the reply message
    "sweeper.after_select",  # due sagas selected, none handled yet
    "choreography.after_commit",  # a handler's outcome committed, its events not yet published
)


class InjectedFault(RuntimeError):
    """Raised by an armed ``raise`` fault point."""


def _parse(spec: str) -> dict[str, tuple[str, float, int | None]]:
    armed: dict[str, tuple[str, float, int | None]] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        point, _, action = part.partition("=")
        if point not in POINTS:
            raise ValueError(f"SAGAS_FAULTS: unknown fault point {point!r} (known: {POINTS})")
        name, _, arg = action.partition(":")
        if name not in ("kill", "exit", "raise", "sleep"):
            raise ValueError(f"SAGAS_FAULTS: unknown action {action!r} for {point}")
        seconds = float(arg) if name == "sleep" and arg else 0.0
        times = int(arg) if name != "sleep" and arg else None
        armed[point] = (name, seconds, times)
    return armed


_armed = _parse(os.environ.get("SAGAS_FAULTS", ""))
_fired: dict[str, int] = {}
_lock = threading.Lock()


# A test harness's own hook (``sagas.testing.explore``): called at every point before arming.
_interceptor: Callable[[str], None] | None = None


def hit(point: str) -> None:
    """Fire the fault armed at ``point``, if any."""
    hook = _interceptor
    if hook is not None:
        hook(point)
    if not _armed:
        return
    armed = _armed.get(point)
    if armed is None:
        return
    action, seconds, times = armed
    with _lock:
        count = _fired.get(point, 0)
        if times is not None and count >= times:
            return
        _fired[point] = count + 1
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "exit":
        os._exit(1)
    elif action == "raise":
        raise InjectedFault(f"injected fault at {point}")
    else:
        time.sleep(seconds)


def arm(spec: str) -> None:
    """Arm fault points in this process (tests); ``arm("")`` disarms all."""
    global _armed
    with _lock:
        _armed = _parse(spec)
        _fired.clear()


def intercept(hook: Callable[[str], None] | None) -> None:
    """Call ``hook(point)`` at every fault point in this process (None: stop). For in-process
    harnesses that simulate a crash at a point by raising from the hook."""
    global _interceptor
    _interceptor = hook
