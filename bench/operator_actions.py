"""What an operator action costs: the plan (``sagas.preview``) and the action (``carry_out``).

    PYTHONPATH=$PWD bench/.venv/bin/python -m bench.operator_actions [--n 200]

One process, a PostgreSQL database of its own, Celery's in-memory transport (so the figures are
the engine's database and Python cost). Per saga of ``bench_spread``: start it, pause it (its
first step running), resume it (the held dispatch goes out), drive its four steps to completion
as replies, then fork it from its last step. Each operator action is timed as preview and carry
out separately; the statements of one of each are counted.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from collections import defaultdict
from typing import Any

from celery import Celery

from bench import common, sqlcount


def _run(url: str, n: int) -> dict[str, Any]:
    import sagas
    from bench import saga_defs
    from sagas import coordinator, starter
    from sagas.install import configure
    from sagas.messages import StepReply
    from sagas.settings import Settings
    from sagas.state import Action

    app = Celery("operator_bench", broker="memory://", set_as_current=False)
    app.conf.task_serializer = "json"
    rt = configure(settings=Settings(database_url=common.sa_url(url)), app=app)
    saga = saga_defs.bench_spread
    times: dict[str, list[float]] = defaultdict(list)
    who = {"reason": "bench", "by": "bench", "rt": rt}

    def timed(name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        times[name].append(time.perf_counter() - t0)  # seconds: summary_ms reports ms
        return out

    def one(i: int) -> None:
        sid = uuid.uuid4().hex
        starter.start(saga.name, {"n": i}, saga_id=sid, rt=rt)
        for action in ("pause", "resume"):
            plan = timed(f"{action}.preview", sagas.preview, sid, action, **who)
            timed(f"{action}.carry_out", sagas.carry_out, plan, rt=rt)
        for step in saga.steps:
            reply = StepReply(
                saga_id=sid, step=step.name, action=Action.FORWARD, attempt=1, ok=True
            )
            coordinator.handle_reply(reply, rt=rt)
        last = saga.steps[-1].name
        plan = timed("fork.preview", sagas.preview, sid, "fork", from_step=last, **who)
        timed("fork.carry_out", sagas.carry_out, plan, rt=rt)

    sqlcount.disable()
    for i in range(10):
        one(i)
    times.clear()
    for i in range(n):
        one(i)
    sqlcount.COUNTS.clear()
    sqlcount.enable()
    one(n)
    sqlcount.disable()
    return {
        "ms": {name: common.summary_ms(values) for name, values in sorted(times.items())},
        "statements_one_saga": dict(sorted(sqlcount.COUNTS.items())),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    args = ap.parse_args()
    with common.fresh_database("bench_ops") as db:
        common.migrate(db)
        result = {
            "bench": "operator_actions",
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": f"operator_actions.py --n {args.n}",
            "n": args.n,
            "load": common.uptime(),
            "result": _run(db, args.n),
        }
    common.write_result("operator_actions", result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
