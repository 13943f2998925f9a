"""Regenerate the results section of bench/README.md from bench/results/*.json.

    bench/.venv/bin/python -m bench.render

Everything between the ``<!-- results:start -->`` and ``<!-- results:end -->`` markers is
replaced; the rest of the README is left alone.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from bench import common

START, END = "<!-- results:start -->", "<!-- results:end -->"
README = common.BENCH / "README.md"


def _load(name: str) -> dict[str, Any] | None:
    p = common.RESULTS / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None


def f(v: Any, nd: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "–"
    return f"{a / b:.2f}x"


def _row(label: str, broker: str, r: dict[str, Any], bases: dict[str, Any]) -> str:
    b, s = r["burst"], r["sequential"]
    per_s = b["sagas_per_s"]
    if len(r.get("runs_burst_per_s", [])) > 1:
        label += f" (median of {r['runs_burst_per_s']}/s)"
    if r.get("disturbed"):
        label += f" ⚠ {'/'.join(r['disturbed'])} restarted during the run"
    seq_step = s["e2e_ms"]["p50"] / 4 if s and s.get("e2e_ms", {}).get("p50") else None
    cols = [
        label, broker, f(per_s), f(b["e2e_ms"]["p50"], 0), f(b["e2e_ms"]["p99"], 0),
        f(s["e2e_ms"]["p50"]) if s else "–", f(s["e2e_ms"]["p99"]) if s else "–",
        f(seq_step, 2), f(s.get("step_ms_all", {}).get("p50"), 2) if s else "–",
        f(b["cpu_s_per_saga"] * 1000, 1) if b.get("cpu_s_per_saga") else "–",
        ratio(per_s, bases.get("chain")), ratio(per_s, bases.get("chain_pg")),
        ratio(per_s, bases.get("dbos")), r.get("load_before", "–"),
        f(b.get("foreign_cpu_cores"), 2),
    ]  # fmt: skip
    return "| " + " | ".join(cols) + " |"


HEADER = (
    "| configuration | broker | sagas/s (burst) | burst p50 ms | burst p99 ms | seq p50 ms "
    "| seq p99 ms | seq ms/step (p50/4) | seq step p50 ms (store) | CPU ms/saga | vs chain "
    "| vs chain+PG | vs DBOS best | load (1/5/15 min) | others' CPU (cores) |\n"
    "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|--:|"
)
LABELS = {
    "chain": "raw Celery chain (4 no-op tasks)",
    "chain_pg": "Celery chain + PG row lock/update/insert per task",
    "sagas_spread": "**sagas (a)**: each step on its own queue",
    "sagas_inline": "**sagas (b)**: all steps on one queue (inline)",
    "sagas_spread_reply": "sagas (a) with SAGAS_LOCAL_TRANSITIONS=false (reply messages)",
    "sagas_spread_direct": "sagas (a) + SAGAS_START_ON_STEP_QUEUE (no coordinator hop)",
    "sagas_inline_direct": "sagas (b) + SAGAS_START_ON_STEP_QUEUE (one task per saga)",
    "sagas_spread_message": "sagas (a), start by message (SAGAS_START_IN_CALLER=false)",
    "sagas_inline_message": "sagas (b), start by message (SAGAS_START_IN_CALLER=false)",
    "sagas_spread_caller": "sagas (a) + SAGAS_START_IN_CALLER (the caller records the start)",
    "sagas_inline_caller": "sagas (b) + SAGAS_START_IN_CALLER (the caller records the start)",
    "chain_spread": "raw Celery chain, each task on its own queue and worker (as (a))",
    "chain_pg_spread": "Celery chain + PG per task, each task on its own queue and worker",
}
ORDER = ("chain", "chain_pg", "chain_spread", "chain_pg_spread", "sagas_spread", "sagas_inline",
         "sagas_spread_message", "sagas_inline_message", "sagas_spread_direct",
         "sagas_inline_direct", "sagas_spread_caller", "sagas_inline_caller",
         "sagas_spread_reply")  # fmt: skip


def render() -> str:  # noqa: C901
    out: list[str] = []
    dbos = _load("dbos")
    dbos_best = None
    if dbos and dbos.get("best_burst_mode"):
        dbos_best = dbos["results"][dbos["best_burst_mode"]]["burst"]["sagas_per_s"]
    any_res = None
    out.append("### Throughput, latency, CPU (4 no-op steps, N sagas per figure)\n")
    out.append(HEADER)
    commands = []
    targets: list[str] = []
    for broker in ("redis", "rabbitmq"):
        tp = _load(f"throughput_{broker}")
        if not tp:
            continue
        any_res = any_res or tp
        commands.append(f"`{tp['command']}` ({tp['date']})")
        res = tp["results"]
        bases = {k: res[k]["burst"]["sagas_per_s"] for k in ("chain", "chain_pg")
                 if k in res and "error" not in res[k]}  # fmt: skip
        bases["dbos"] = dbos_best
        for key in ORDER:
            r = res.get(key)
            if not r:
                continue
            if "error" in r:
                out.append(f"| {LABELS[key]} | {broker} | failed: {r['error'][:120]} |")
                continue
            out.append(_row(LABELS[key], broker, r, bases))
        cs = _load(f"celery_saga_{broker}")
        if cs:
            commands.append(f"`{cs['command']}` ({cs['date']})")
            if "error" in cs:
                out.append(
                    f"| celery-saga 0.1.1 (Redis state) | {broker} | failed: {cs['error'][:150]} |"
                )
            else:
                out.append(_row("celery-saga 0.1.1, Redis state backend", broker, cs, bases))
        targets.extend(_targets(broker, res, dbos_best))
    if dbos:
        commands.append(f"`{dbos['command']}` ({dbos['date']})")
        for mode, r in dbos["results"].items():
            if "error" in r:
                out.append(f"| DBOS {mode} | – | failed: {r['error'][:150]} |")
                continue
            label = {"direct1": "DBOS 3.4 direct start_workflow, 1 process",
                     "direct2": "DBOS 3.4 direct start_workflow, 2 processes",
                     "queue": "DBOS 3.4 queue, 2 worker processes"}.get(mode, mode)  # fmt: skip
            if mode == dbos.get("best_burst_mode"):
                label += " (best)"
            out.append(_row(label, "(none: PostgreSQL)", r, {"dbos": dbos_best}))
    out.append("")
    out.append(
        "Columns: *burst* = all N start messages queued before the entry queue's consumer is "
        "released, throughput = N / (last finished_at − release); *seq* = one saga at a time "
        "(unloaded latency, start call → finished_at); *seq ms/step* = seq p50 / 4; *seq step "
        "p50 (store)* = saga_step.finished_at − started_at (sagas; for the Celery chains the gap "
        "between consecutive tasks' clocks; DBOS: operation_outputs; celery-saga: the step task "
        "alone); *CPU ms/saga* = utime+stime of every worker process (main + prefork children) "
        "during the burst / N (DBOS: its own processes). Ratios are throughput ratios against the "
        "baselines measured in the same `bench.throughput` run (celery-saga and DBOS: separate runs "
        "of the same day, against that broker's latest baseline figures)."
    )
    if targets:
        out.append("\n### Targets (reported, not asserted)\n")
        out.extend(targets)
    sc = _load("scale")
    if sc:
        out.append("\n### Scale: sweeper pass and start latency vs table size\n")
        out.append(
            "| finished sagas | in flight (during the sweeps) | start p50 ms | start p99 ms | sweeper pass median ms | sweeper pass max ms | load |"
        )
        out.append("|--:|--:|--:|--:|--:|--:|---|")
        for r in sc["rows"]:
            out.append(f"| {r['finished']:,} | {r['in_flight_after']} | {f(r['start_ms']['p50'], 2)} | "
                       f"{f(r['start_ms']['p99'], 2)} | {f(r['sweep_ms']['median'], 2)} | "
                       f"{f(r['sweep_ms']['max'], 2)} | {r['load']} |")  # fmt: skip
        out.append(f"\nTables at the end: {sc['table_counts']}, sizes {sc['table_sizes']}. "
                   f"Start = `{sc['start_call']}`. Sweeper pass = `sagas.sweeper.sweep(Runtime)`, "
                   f"20 passes per row after the row's starts, nothing due (the in-flight sagas' step timeout is 1 h). Ratio of the last to the first level's median "
                   f"pass time: {sc['sweep_ratio_max_vs_first_level']}x. "
                   f"Both sweeper queries are index range scans on `wake_at` / `outbox_at` "
                   f"(`EXPLAIN ANALYZE` in bench/results/scale.json). `{sc['command']}` ({sc['date']})")  # fmt: skip
    for soak in filter(None, (_load("soak"), _load("soak_rabbitmq"))):
        out.append(f"\n### Worker memory over a long run ({soak['broker']})\n")
        samples = soak["samples"]
        pick = [samples[0]] + samples[1 : -1 : max(1, len(samples) // 8)] + [samples[-1]]
        out.append("| t (s) | sagas started | RSS of all worker processes (MiB) |")
        out.append("|--:|--:|--:|")
        for s in pick:
            out.append(f"| {s['t']} | {s['started']} | {s['total_mib']} |")
        w = soak["rss_growth_worst_process"]
        if soak.get("workers_died") or soak.get("disturbed"):
            out.append(
                f"\n⚠ during this soak: servers restarted {soak.get('disturbed')}, workers "
                f"that exited (name: seconds into the run) {soak.get('workers_died')}; "
                "growth is computed over the processes alive at the end."
            )
        pp = soak["per_process_first_last"]
        alive = {k: v for k, v in pp.items() if v[1] is not None}
        grow = sorted(v[1] - v[0] for v in alive.values())
        out.append(
            f"\n{soak['seconds']:.0f} s at {soak['rate_per_s']} sagas/s ({soak['broker']}): "
            f"{soak['sagas_started']} sagas started, final states {soak['states']}. "
            f"Over the {len(alive)} worker processes alive from 60 s to the end (of {len(pp)}): "
            f"RSS {sum(v[0] for v in alive.values()):.1f} → {sum(v[1] for v in alive.values()):.1f} "
            f"MiB ({sum(grow):+.1f} MiB in total, median {grow[len(grow) // 2] if grow else 0:+.1f} "
            f"MiB per process); the process that grew most: {w['process']} {w['mib']:+} MiB. "
            f"Load {soak['load_before']} → {soak['load_after']}. `{soak['command']}` ({soak['date']})"
        )
    for cfg in ("sagas_inline", "sagas_spread"):
        pr = _load(f"profile_{cfg}")
        if not pr:
            continue
        out.append(f"\n### Profile: {cfg} ({pr['broker']}, {pr['n']} sagas under py-spy)\n")
        out.append(f"Per saga: {json.dumps(pr['per_saga'])}. CPU ms per saga by worker: "
                   f"{json.dumps(pr['cpu_ms_per_saga_by_worker'])}.\n")  # fmt: skip
        if pr.get("per_saga_by_queue"):
            out.append(_per_hop_table(pr["per_saga_by_queue"]))
        for kind, a in pr["breakdown"].items():
            out.append(f"Worker `{kind}`: {a['cpu_ms_per_unit']} ms CPU per {a['unit']}; "
                       f"{a['samples']} samples.\n")  # fmt: skip
            out.append(
                f"| where (innermost engine frame) | % of samples | ≈ CPU ms per {a['unit']} | | where (leaf library) | % of samples |"
            )
            out.append("|---|--:|--:|---|---|--:|")
            ph = list(a["by_phase_pct"].items())
            lib = list(a["by_library_pct"].items())
            for i in range(max(len(ph), len(lib))):
                p = ph[i] if i < len(ph) else ("", "")
                lb = lib[i] if i < len(lib) else ("", "")
                ms = a["cpu_ms_per_unit_by_phase"].get(p[0], "") if p[0] else ""
                out.append(f"| {p[0]} | {p[1]} | {ms} | | {lb[0]} | {lb[1]} |")
            out.append("")
        out.append(f"`{pr['command']}` ({pr['date']}); flamegraph {pr['flamegraph']}.")
    if any_res:
        m, v = any_res["machine"], any_res["versions"]
        out.append("\n### Machine and versions\n")
        out.append(f"- machine: {m['nproc']} CPUs ({m['cpu']}), {m['ram_gib']} GiB RAM, "
                   f"Linux {m['kernel']}; shared with other people's test runs (see the load column)")  # fmt: skip
        out.append("- versions: " + ", ".join(f"{k} {val}" for k, val in v.items()))
        out.append("- commands: " + "; ".join(commands))
    return "\n".join(out)


def _targets(broker: str, res: dict[str, Any], dbos_best: float | None) -> list[str]:
    lines = []
    ok = {k: v for k, v in res.items() if "error" not in v}

    def tp(k: str) -> float | None:
        return ok[k]["burst"]["sagas_per_s"] if k in ok else None

    def seq(k: str) -> float | None:
        return ok[k]["sequential"]["e2e_ms"]["p50"] if k in ok else None

    for cfg in ("sagas_spread", "sagas_inline", "sagas_spread_message", "sagas_inline_message",
                "sagas_spread_direct", "sagas_inline_direct", "sagas_spread_caller",
                "sagas_inline_caller"):  # fmt: skip
        if cfg not in ok:
            continue
        best = tp(cfg)
        if dbos_best:
            lines.append(f"- {broker}, {cfg}: {best}/s vs DBOS best {dbos_best}/s = "
                         f"{best / dbos_best:.2f}x (target ≥ 1.5x)")  # type: ignore[operator]  # fmt: skip
        if tp("chain_pg"):
            lines.append(f"- {broker}, {cfg}: vs Celery+PG floor {tp('chain_pg')}/s = "
                         f"{best / tp('chain_pg'):.2f}x (target ≥ 0.8x)")  # type: ignore[operator]  # fmt: skip
        if cfg.startswith("sagas_spread") and tp("chain_pg_spread"):
            lines.append(f"- {broker}, {cfg}: vs the same floor in the same topology (one queue "
                         f"and worker per task) {tp('chain_pg_spread')}/s = "
                         f"{best / tp('chain_pg_spread'):.2f}x")  # type: ignore[operator]  # fmt: skip
        if seq("chain"):
            lines.append(f"- {broker}, {cfg}: unloaded latency per step {seq(cfg) / 4:.2f} ms vs raw "  # type: ignore[operator]
                         f"Celery {seq('chain') / 4:.2f} ms = {seq(cfg) / seq('chain'):.2f}x (target ≤ 2x)")  # type: ignore[operator]  # fmt: skip
    return lines


def _per_hop_table(by_queue: dict[str, dict[str, float]]) -> str:
    """What each queue's worker did per saga: statements, messages, task events, log records
    and JSON encodes/decodes (a spread service worker runs one step per saga: per hop)."""

    def total(c: dict[str, float], prefix: str) -> float:
        return round(sum(v for k, v in c.items() if k.startswith(prefix)), 2)

    rows = ["| queue (worker) | statements | transactions | messages published | task events "
            "| log records (sagas / celery) | JSON encodes | JSON decodes |",
            "|---|--:|--:|--:|--:|--:|--:|--:|"]  # fmt: skip
    for queue, c in by_queue.items():
        rows.append(
            f"| `{queue or '(default)'}` | {c.get('sql_total', 0)} | {c.get('transactions', 0)} "
            f"| {c.get('publish_total', 0)} | {total(c, 'event:')} "
            f"| {total(c, 'log:sagas')} / {total(c, 'log:celery')} | {c.get('json_encode', 0)} "
            f"| {c.get('json_decode', 0)} |"
        )
    return "Per hop (per saga, by the queue its worker consumes):\n\n" + "\n".join(rows) + "\n"


def main() -> int:
    text = README.read_text() if README.exists() else f"# bench\n\n{START}\n{END}\n"
    if START not in text:
        text += f"\n{START}\n{END}\n"
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{START}\n{render()}\n{END}{tail}")
    print(f"wrote {README}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
