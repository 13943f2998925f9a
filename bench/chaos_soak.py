"""Chaos soak: many sagas through real workers while processes die and services restart.

    .venv/bin/python -m bench.chaos_soak [--sagas 1000] [--rate 25] [--kill-every 2 5]

Builds the fault suite's topology (``tests/faults/conftest.fault_cluster``: a scratch PostgreSQL
database, a Redis key prefix, a coordinator, inventory/payment/shipping workers and beat) and:

- starts N ``fprobe_soak`` sagas (``tests/faults/fprobe.py``: 20 s step timeouts) (a mix: most complete, some retry transient failures, some fail for
  good and are compensated, some need a compensation retried), half through
  ``start_saga.delay`` as a web app would and half with ``Saga.start`` in-process; a start that
  raises is retried with the same ``saga_id`` (idempotent), as a client would;
- every few seconds SIGKILLs a random prefork child of a random worker (coordinator included);
- restarts Redis once (no persistence: every queued message is lost) and PostgreSQL once;
- restarts any worker that dies by itself, as a supervisor would (and says so);
- then waits for every saga to settle and reports: sagas started, completed, failed and
  compensated, flagged (parked), lost (never created, or not settled in time), duplicated
  effects (the probe's effects are idempotency-keyed: a second application would show as a
  duplicate), duplicate runs (raw deliveries of one attempt beyond the first: what a
  non-idempotent participant would have applied twice), and the fault suite's invariant
  violations over all sagas.

Not part of the test suite: it takes several minutes and restarts shared services.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kombu.exceptions import OperationalError  # noqa: E402

import sagas  # noqa: E402
from sagas import report  # noqa: E402
from sagas.errors import SagaError  # noqa: E402
from tests.faults import invariants  # noqa: E402
from tests.faults.conftest import (  # noqa: E402
    FaultCluster,
    children,
    fault_cluster,
    restart_service,
)
from tests.faults.fprobe import fprobe_soak  # noqa: E402

WORKERS = ("sagas", "inventory", "payment", "shipping")


def payload(rng: random.Random, n: int) -> tuple[dict[str, Any], str]:
    """A saga's payload and the outcome it should reach."""
    sleep = {s: round(rng.uniform(0.02, 0.12), 3) for s in ("f1", "f2", "f3")}
    roll = rng.random()
    if roll < 0.70:
        return {"tag": f"ok{n}", "sleep": sleep}, "completed"
    if roll < 0.85:
        return {"tag": f"retry{n}", "sleep": sleep, "transient": {"f2": 1}}, "completed"
    if roll < 0.95:
        return {"tag": f"fail{n}", "sleep": sleep, "fail_permanent": "f3"}, "failed"
    return (
        {"tag": f"undo{n}", "sleep": sleep, "fail_permanent": "f3",
         "compensation_transient": {"f1": 1}},
        "failed",
    )  # fmt: skip


class Chaos:
    """Kills pool children at random; restarts Redis and PostgreSQL once each; revives."""

    def __init__(self, fc: FaultCluster, rng: random.Random, every: tuple[float, float]) -> None:
        self.fc, self.rng, self.every = fc, rng, every
        self.kills = 0
        self.revived: list[str] = []
        self.events: list[str] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()  # held while a service restarts: no kills meanwhile
        self.t0 = time.monotonic()

    def log(self, what: str) -> None:
        line = f"[{time.monotonic() - self.t0:7.1f}s] {what}"
        self.events.append(line)
        print(line, flush=True)

    def run(self) -> None:
        while not self.stop.wait(self.rng.uniform(*self.every)):
            with self.lock:
                self.revive()
                name = self.rng.choice(WORKERS)
                proc = self.fc.procs.get(name)
                pool = children(proc.pid) if proc and proc.alive() else []
                if pool:
                    pid = self.rng.choice(pool)
                    try:
                        os.kill(pid, signal.SIGKILL)
                        self.kills += 1
                    except ProcessLookupError:
                        pass

    def revive(self) -> None:
        dead = self.fc.dead()
        if dead:
            for name, last in dead.items():
                self.log(f"{name} died by itself; restarting it. Last lines:\n{last}")
            self.revived += sorted(dead)
            try:
                self.fc.configure()
            except Exception as exc:  # noqa: BLE001 - retried on the next tick
                self.log(f"restart failed ({exc}); retrying")

    def restart(self, service: str, down_for: float) -> None:
        with self.lock:
            self.log(f"restarting {service} (down {down_for}s)")
            restart_service(service, down_for=down_for)
            self.log(f"{service} back")


def start_one(fc: FaultCluster, sid: str, body: dict[str, Any], in_process: bool) -> int:
    """Start (retrying with the same id until accepted); returns the number of errors seen."""
    errors = 0
    for _ in range(120):
        try:
            if in_process:
                fprobe_soak.start(body, saga_id=sid)
            else:
                sagas.start_saga.delay("fprobe_soak", body, saga_id=sid)
            return errors
        except (OperationalError, SagaError, OSError) as exc:
            errors += 1
            if errors == 1:
                print(f"  start {sid[:16]} ({'in-process' if in_process else 'delay'}) raised "
                      f"{type(exc).__name__}; retrying with the same id", flush=True)  # fmt: skip
            time.sleep(0.5)
        except Exception as exc:  # noqa: BLE001 - e.g. a store error during the PG restart
            errors += 1
            if errors == 1:
                print(f"  start {sid[:16]} raised {type(exc).__name__}: {exc!s:.100}", flush=True)
            time.sleep(0.5)
    return errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sagas", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=6.0, help="starts per second")
    parser.add_argument("--kill-every", type=float, nargs=2, default=(2.0, 5.0))
    parser.add_argument("--settle", type=float, default=240.0, help="seconds to wait at the end")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    logdir = Path(tempfile.mkdtemp(prefix="chaos-soak-"))
    print(f"chaos soak: {args.sagas} sagas, logs in {logdir}", flush=True)

    with fault_cluster("redis", logdir) as fc:
        chaos = Chaos(fc, rng, tuple(args.kill_every))
        killer = threading.Thread(target=chaos.run, name="chaos", daemon=True)
        killer.start()
        expected: dict[str, str] = {}
        path: dict[str, str] = {}
        start_errors = Counter()
        t0 = time.monotonic()
        restarts = {args.sagas // 3: ("redis", 1.0), 2 * args.sagas // 3: ("postgresql", 1.0)}
        for n in range(args.sagas):
            if n in restarts:
                service, down = restarts[n]
                threading.Thread(target=chaos.restart, args=(service, down), daemon=True).start()
            sid = f"soak-{n:05d}-{uuid.uuid4().hex[:8]}"
            body, outcome = payload(rng, n)
            in_process = n % 2 == 1
            expected[sid], path[sid] = outcome, "in-process" if in_process else "delay"
            start_errors[path[sid]] += start_one(fc, sid, body, in_process)
            time.sleep(max(0.0, (n + 1) / args.rate - (time.monotonic() - t0)))
        chaos.log(f"all {args.sagas} started; chaos continues for 10 s")
        time.sleep(10)
        chaos.stop.set()
        killer.join()
        chaos.revive()
        chaos.log(f"chaos over ({chaos.kills} pool children killed); settling")

        ids = sorted(expected)
        findings = invariants.check(
            fc.engine, fc.store, ids, settle=args.settle, outbox_bound=10, duplicate_runs=True
        )
        elapsed = time.monotonic() - t0
        rows = {
            r.id: r
            for r in fc.query("SELECT id, state, parked FROM saga WHERE id = ANY(:ids)", ids=ids)
        }
        tally: Counter[str] = Counter()
        wrong: list[str] = []
        for sid in ids:
            row = rows.get(sid)
            if row is None:
                tally[f"lost (never created, {path[sid]})"] += 1
            elif row.state == "completed":
                tally["completed"] += 1
            elif row.state == "failed":
                tally["failed and compensated"] += 1
            elif row.parked:
                tally["flagged (parked)"] += 1
            else:
                tally[f"lost (stuck {row.state}, not flagged)"] += 1
            if row is not None and row.state in ("completed", "failed"):
                if row.state != expected[sid]:
                    wrong.append(f"{sid}: {row.state}, expected {expected[sid]}")
        dup_effects = fc.scalar(
            "SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) AS n FROM fault_effect "
            "WHERE saga_id = ANY(:ids) GROUP BY saga_id, step, action) x",
            ids=ids,
        )
        runs = fc.scalar("SELECT count(*) FROM fault_run WHERE saga_id = ANY(:ids)", ids=ids)
        retried = fc.scalar(
            "SELECT count(*) FROM saga_event WHERE saga_id = ANY(:ids) AND kind = 'step_timed_out'",
            ids=ids,
        )
        summary = {
            "sagas started": len(ids),
            "completed": tally["completed"],
            "failed and compensated": tally["failed and compensated"],
            "flagged (parked)": tally["flagged (parked)"],
            "lost": sum(v for k, v in tally.items() if k.startswith("lost")),
            "lost detail": {k: v for k, v in tally.items() if k.startswith("lost")},
            "duplicated effects": int(dup_effects),
            "duplicate runs of one attempt (at-least-once deliveries)": findings.duplicate_runs,
            "step runs in total": int(runs),
            "step timeouts fired": int(retried),
            "outcome differs from the payload's intent": len(wrong),
            "invariant violations": len(findings.violations),
            "start calls that raised (retried with the same id)": dict(start_errors),
            "pool children killed": chaos.kills,
            "workers that died by themselves and were restarted": chaos.revived,
            "wall time (s)": round(elapsed, 1),
        }
        print("\n== chaos soak result ==")
        print(json.dumps(summary, indent=2))
        for line in wrong[:10]:
            print("  outcome:", line)
        for line in wrong[:3]:
            print(report.timeline(*fc.store.get(line.split(":")[0])))
        for violation in findings.violations[:10]:
            print("  violation:", violation[:2000])
        ok = not findings.violations and not wrong and summary["lost"] == 0
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
