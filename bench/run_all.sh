#!/usr/bin/env bash
# Run every benchmark, then regenerate the results section of bench/README.md.
#
#   bash bench/run_all.sh
#
# Env: BENCH_N (1000), BENCH_SEQ_N (1000), BENCH_REPEAT (1: runs per throughput figure, median
# kept), BENCH_SOAK_SECONDS (600; 0 skips the memory soak), BENCH_LEVELS (scale levels).
# Needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust), Redis on 6379, RabbitMQ on 5672.
set -u
cd "$(dirname "$0")/.."
PY=${BENCH_PYTHON:-bench/.venv/bin/python}
if [ ! -x "$PY" ]; then
    python3.11 -m venv bench/.venv
    bench/.venv/bin/pip install -q -r bench/requirements.txt
fi
export PYTHONPATH=$PWD
N=${BENCH_N:-1000}
SEQ=${BENCH_SEQ_N:-1000}
REPEAT=${BENCH_REPEAT:-1}
SOAK=${BENCH_SOAK_SECONDS:-600}
LEVELS=${BENCH_LEVELS:-10000,100000,1000000}
mkdir -p bench/results/logs
rm -f bench/results/*.json bench/results/*.txt bench/results/logs/*.log
status=0
run() {
    echo "+ $* (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    "$@" || { echo "FAILED: $*" >&2; status=1; }
}
t0=$(date +%s)
run "$PY" -m bench.throughput --broker redis --n "$N" --seq-n "$SEQ" --repeat "$REPEAT"
run "$PY" -m bench.throughput --broker rabbitmq --n "$N" --seq-n "$SEQ" --repeat "$REPEAT"
run "$PY" -m bench.dbos_bench --n "$N" --seq-n "$SEQ"
run "$PY" -m bench.celery_saga_bench --broker redis --n "$N" --seq-n "$SEQ"
run "$PY" -m bench.celery_saga_bench --broker rabbitmq --n "$N" --seq-n "$SEQ"
run "$PY" -m bench.profile --config sagas_inline --n 2000
run "$PY" -m bench.profile --config sagas_spread --n 2000
# The soak only measures worker memory, so it runs in the background while the scale benchmark
# (mostly a bulk insert) runs; the scale figures are taken with the soak's 20 sagas/s going on.
soak_pid=
trap 'if [ -n "$soak_pid" ]; then kill -TERM "$soak_pid" 2>/dev/null; fi' EXIT
if [ "$SOAK" != 0 ]; then
    echo "+ soak --seconds $SOAK in the background" >&2
    "$PY" -m bench.soak --seconds "$SOAK" > bench/results/logs/soak.out 2>&1 &
    soak_pid=$!
fi
run "$PY" -m bench.scale --levels "$LEVELS"
if [ -n "$soak_pid" ]; then
    wait "$soak_pid" || { echo "FAILED: soak (see bench/results/logs/soak.out)" >&2; status=1; }
fi
run "$PY" -m bench.render
echo "run_all: $(( $(date +%s) - t0 )) s, status $status" >&2
exit $status
