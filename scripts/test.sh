#!/usr/bin/env bash
# The whole test suite: serial tests (which also launch mpiexec jobs of their own,
# each under a timeout), then the in-process MPI tests at 2 and 4 ranks.
# Run from the repository root inside the environment distnn is installed in.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== serial tests (and the jobs they launch), one test file per worker on every core"
# Much of their time is spent waiting on the jobs they start (start-up, watchdogs,
# signals): a worker per core overlaps those waits. `scripts/test.sh -n 0` runs them
# in this process instead; a later -n wins.
python -m pytest -q -n auto --dist loadfile "$@"

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
for n in 2 4; do
    echo "== MPI tests under mpiexec -n $n (rank 0 shown; other ranks' output on failure)"
    # The outer timeout is the hang guard: a rank stuck in a collective fails the run.
    # Each rank's pytest gets a temporary folder of its own: n sessions cleaning up one
    # shared /tmp/pytest-of-USER at once race each other.
    if ! timeout -s KILL 600 mpiexec -n "$n" bash -c \
        'tmp="$0/tmp-${PMI_RANK:-0}"
         if [ "${PMI_RANK:-0}" = 0 ]; then exec "$@" --basetemp "$tmp"
         else exec "$@" --basetemp "$tmp" >"$0/rank-$PMI_RANK.log" 2>&1; fi' \
        "$logs" python -m pytest -q --with-mpi -m mpi -p no:cacheprovider "$@"; then
        for log in "$logs"/rank-*.log; do echo "--- $log"; cat "$log"; done
        exit 1
    fi
done
