#!/usr/bin/env bash
# Run one test (or a file of them) N times in a row next to a CPU-burning neighbour, and say
# how many runs passed. A process-level test that fails one run in twenty under load will
# fail CI sooner or later; this is how to find out before CI does.
#
#   scripts/repeat-under-load.sh 20 'tests/actors/test_actor_processes.py::test_fifty_items_survive_a_sigkill_and_a_late_joiner_takes_work'
#
# BURNERS (default: the number of CPUs) busy-loop processes share the machine with the test.
# Each run's output goes to LOG_DIR (default: a new temporary directory); the summary lists
# the failed runs' logs. Exits 0 only when every run passed.
set -uo pipefail
if [ "$#" -lt 2 ] || ! [[ "$1" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 RUNS TEST_ID [PYTEST_ARGS...]" >&2
    exit 2
fi
runs=$1
shift
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
burners=${BURNERS:-$(nproc)}
log_dir=${LOG_DIR:-$(mktemp -d -t repeat-under-load.XXXXXX)}
mkdir -p "$log_dir"

burner_pids=()
stop_burners() {
    for pid in "${burner_pids[@]}"; do kill "$pid" 2>/dev/null; done
}
trap stop_burners EXIT
for _ in $(seq "$burners"); do
    "$python" -c "while True: pass" &
    burner_pids+=($!)
done

passed=0
failed_logs=()
for run in $(seq "$runs"); do
    log="$log_dir/run-$run.log"
    started=$(date +%s)
    "$python" -m pytest -q -p no:cacheprovider "$@" >"$log" 2>&1
    status=$?
    seconds=$(($(date +%s) - started))
    if [ "$status" -eq 0 ]; then
        passed=$((passed + 1))
        echo "run $run/$runs: passed in ${seconds} s"
    else
        failed_logs+=("$log")
        echo "run $run/$runs: FAILED (pytest exit $status) in ${seconds} s: $log"
    fi
done
echo "$passed of $runs runs passed next to $burners busy-loop neighbour(s) (load average: $(cut -d' ' -f1-3 /proc/loadavg))"
if [ "${#failed_logs[@]}" -gt 0 ]; then
    printf 'failed: %s\n' "${failed_logs[@]}"
    exit 1
fi
