"""The targets' ratios from interleaved rounds: each round runs every engine configuration and
its comparison once, back to back, so a machine whose speed drifts (a shared host: the same
DBOS mode ran 199/s and 158/s twenty minutes apart here) moves both sides of a ratio alike.

    bench/.venv/bin/python -m bench.paired [--rounds 3] [--n 2000] [--seq-n 100]
        [--pairs redis:sagas_inline/dbos:direct3,...]

A pair is ``<broker>:<config>/<baseline>``: the baseline is another ``bench.throughput``
configuration on the same broker, or ``dbos:<mode>`` (``bench.dbos_bench``'s direct mode with
that many processes). ``<config>@4`` runs that configuration's workers with 4 processes each
(``BENCH_CONCURRENCY`` for that run only). ``before:<config>`` is that configuration on the same
broker run from another checkout (``--before-tree``, e.g. a worktree of the previous commit):
the before/after of a change, measured in the same rounds. Every figure of every round is kept; the ratio reported is the median of
the per-round ratios, beside the median of each side. ``BENCH_CONCURRENCY`` applies to the
Celery workers as in ``bench.throughput``. Writes bench/results/paired<label>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from typing import Any

from bench import common
from bench.common import log

DEFAULT_PAIRS = (
    "redis:sagas_inline/dbos:direct3,"
    "rabbitmq:sagas_inline/dbos:direct3,"
    "redis:sagas_spread/chain_pg_spread,"
    "redis:sagas_spread/chain_pg_spread_defaults,"
    "rabbitmq:sagas_spread/chain_pg_spread,"
    "rabbitmq:sagas_spread/chain_pg_spread_defaults"
)


def _throughput(
    config: str, broker: str, n: int, seq_n: int, tree: str | None = None
) -> dict[str, Any]:
    config, _, concurrency = config.partition("@")
    extra = {"BENCH_CONCURRENCY": concurrency} if concurrency else {}
    if tree:
        extra["PYTHONPATH"] = tree
    cmd = [sys.executable, "-m", "bench.throughput", "--one", config, "--broker", broker,
           "--n", str(n), "--seq-n", str(seq_n)]  # fmt: skip
    proc = subprocess.run(
        cmd, cwd=tree or common.ROOT, env=common.worker_env(extra), capture_output=True, text=True,
        timeout=900, check=False,
    )  # fmt: skip
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{config} on {broker} failed: {proc.stderr[-2000:]}")
    r: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    return r


def _dbos(mode: str, n: int) -> dict[str, Any]:
    from bench.dbos_bench import run_direct

    if not mode.startswith("direct"):
        raise SystemExit(f"dbos:{mode}: only the direct modes pair (direct1, direct2, ...)")
    return run_direct(int(mode[6:] or 1), n, 0, 32)


def _figure(r: dict[str, Any]) -> dict[str, Any]:
    b = r["burst"]
    return {
        "sagas_per_s": b["sagas_per_s"],
        "cpu_ms_per_saga": round(b["cpu_s_per_saga"] * 1000, 2),
        "seq_client_e2e_p50_ms": (r.get("sequential", {}).get("client_e2e_ms") or {}).get("p50"),
        "load_before": r.get("load_before"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", default=DEFAULT_PAIRS)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--seq-n", type=int, default=100)
    ap.add_argument("--label", default="")
    ap.add_argument("--before-tree", help="checkout that before:<config> runs from")
    args = ap.parse_args(argv)

    pairs = []
    for item in args.pairs.split(","):
        broker, _, rest = item.partition(":")
        config, _, baseline = rest.partition("/")
        if broker not in common.BROKERS or not config or not baseline:
            raise SystemExit(f"--pairs: {item!r} is not <broker>:<config>/<baseline>")
        pairs.append((broker, config, baseline))
    # Each distinct run once per round, even when several pairs share it.
    runs: list[tuple[str, str]] = []
    for broker, config, baseline in pairs:
        for key in ((broker, config), ("dbos", baseline[5:]) if baseline.startswith("dbos:")
                    else (broker, baseline)):  # fmt: skip
            if key not in runs:
                runs.append(key)

    figures: dict[str, list[dict[str, Any]]] = {f"{b}:{c}": [] for b, c in runs}
    for rnd in range(args.rounds):
        for broker, config in runs:
            log(f"round {rnd + 1}/{args.rounds}: {broker}:{config}, load {common.uptime()}")
            if broker == "rabbitmq":
                common.ensure_rabbit_vhost()
            if broker == "dbos":
                r = _dbos(config, args.n)
            elif config.startswith("before:"):
                if not args.before_tree:
                    raise SystemExit(f"{config}: needs --before-tree")
                r = _throughput(config[7:], broker, args.n, args.seq_n, args.before_tree)
            else:
                r = _throughput(config, broker, args.n, args.seq_n)
            figures[f"{broker}:{config}"].append(_figure(r))
            log(f"  {r['burst']['sagas_per_s']}/s")

    def side(key: str) -> list[float]:
        return [f["sagas_per_s"] for f in figures[key]]

    out_pairs = []
    for broker, config, baseline in pairs:
        base_key = (
            f"dbos:{baseline[5:]}" if baseline.startswith("dbos:") else f"{broker}:{baseline}"
        )
        mine, theirs = side(f"{broker}:{config}"), side(base_key)
        per_round = [round(a / b, 3) for a, b in zip(mine, theirs, strict=True)]
        out_pairs.append({
            "engine": f"{broker}:{config}", "baseline": base_key,
            "engine_per_s": mine, "baseline_per_s": theirs,
            "engine_median": statistics.median(mine), "baseline_median": statistics.median(theirs),
            "ratio_per_round": per_round, "ratio_median": statistics.median(per_round),
        })  # fmt: skip
    out = {
        "before_tree": args.before_tree,
        "rounds": args.rounds, "n": args.n, "seq_n": args.seq_n,
        "concurrency": common.CONCURRENCY, "pool": common.POOL,
        "machine": common.machine(), "versions": common.versions(),
        "figures": figures, "pairs": out_pairs,
    }  # fmt: skip
    common.write_result(f"paired{args.label}", out)
    rows = [
        {"engine": p["engine"], "baseline": p["baseline"], "engine /s": p["engine_median"],
         "baseline /s": p["baseline_median"], "ratio (median of rounds)": p["ratio_median"],
         "per round": " ".join(f"{x:.2f}" for x in p["ratio_per_round"])}
        for p in out_pairs
    ]  # fmt: skip
    print(common.table(rows, list(rows[0])), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
