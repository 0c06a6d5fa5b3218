#!/bin/sh
# The image's install step: a virtual environment with distnn from the source tree,
# and with it the mpich extra's wheel that brings mpiexec and the MPI library mpi4py loads.
# tests/test_docker.py runs this same script into a clean venv, since CI has no Docker.
#
#   install-distnn.sh SOURCE_DIR VENV_DIR
set -eu
[ $# -eq 2 ] || {
    echo "usage: $0 SOURCE_DIR VENV_DIR" >&2
    exit 2
}
python3 -m venv "$2"
"$2/bin/python" -m pip install --disable-pip-version-check "$1[mpich]"
# The installed package, not the source tree, must be what runs.
"$2/bin/python" -m distnn.train --version
"$2/bin/mpiexec" --version | head -n 2
