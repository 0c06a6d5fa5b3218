#!/usr/bin/env bash
# The whole test suite: serial tests (which also launch mpiexec jobs of their own,
# each under a timeout), then the in-process MPI tests at 2 and 4 ranks.
# Run from the repository root inside the environment distnn is installed in.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== serial tests (and launched jobs)"
python -m pytest -q "$@"

for n in 2 4; do
    echo "== MPI tests under mpiexec -n $n"
    # The outer timeout is the hang guard: a rank stuck in a collective fails the run.
    timeout -s KILL 600 mpiexec -n "$n" python -m pytest -q --with-mpi -m mpi \
        -p no:cacheprovider "$@"
done
