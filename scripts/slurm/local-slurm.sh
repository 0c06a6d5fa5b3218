#!/usr/bin/env bash
# A real single-node Slurm on this machine, for trying and testing train.sbatch.
#
#   scripts/slurm/local-slurm.sh start STATE_DIR   # install if needed, configure, start
#   . STATE_DIR/env                                # SLURM_CONF for sbatch, srun, squeue …
#   scripts/slurm/local-slurm.sh stop STATE_DIR    # stop the daemons it started
#
# Installs Debian's slurmctld, slurmd, slurm-client and munge when sbatch is missing
# (root; `apt-get update` first), then writes STATE_DIR/slurm.conf for one node named
# "distnn" at 127.0.0.1 with this machine's real CPU count (proctrack/linuxproc,
# task/none, select/cons_tres with CR_CPU, MpiDefault=pmi2) and starts its own munged,
# slurmctld and slurmd, all with pid files, logs and state under STATE_DIR. Beyond the
# packages' own files nothing goes under /etc: the node name and address are explicit,
# so a hostname that does not resolve does no harm, and the munge socket and ports are
# private to this instance (SLURM_PORT_BASE, else the first free pair from 16817), so it
# can sit beside a system Slurm or another instance of itself.
#
# Exit status: 0 started; 3 Slurm is not installed and cannot be (not root, no apt-get,
# or the install failed; the caller may skip); 1 anything else (see the logs it prints).
set -euo pipefail

usage() {
    echo "usage: $0 start|stop STATE_DIR" >&2
    exit 1
}
[ $# -eq 2 ] || usage
action=$1
state=$2
mkdir -p "$state"
state=$(cd "$state" && pwd)

node=distnn

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pick_ports() {
    # slurmctld's port and slurmd's (the next one): SLURM_PORT_BASE if set, else the
    # first free pair from 16817 on, so that a second instance or a system Slurm is
    # left alone.
    local base=${SLURM_PORT_BASE:-16817} tries=${SLURM_PORT_BASE:+1}
    for _ in $(seq "${tries:-50}"); do
        if ! listening "$base" && ! listening $((base + 1)); then
            ctld_port=$base
            slurmd_port=$((base + 1))
            return 0
        fi
        base=$((base + 2))
    done
    echo "local-slurm: no free port pair for slurmctld and slurmd" >&2
    exit 1
}

stop_daemons() {
    # Only the processes this script started, by the pids it recorded: TERM to all at
    # once (each takes 1-2 s to shut down), KILL what is left after 10 s.
    local name pid pids=()
    for name in slurmd slurmctld munged; do
        [ -f "$state/$name.pid" ] || continue
        pid=$(cat "$state/$name.pid")
        rm -f "$state/$name.pid"
        # A stale pid file may name someone else's process by now: check its name.
        [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ] || continue
        kill -TERM "$pid" 2>/dev/null && pids+=("$pid")
    done
    local alive
    for _ in $(seq 100); do
        alive=0
        for pid in "${pids[@]}"; do
            kill -0 "$pid" 2>/dev/null && alive=1
        done
        [ "$alive" = 0 ] && return 0
        sleep 0.1
    done
    for pid in "${pids[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
}

if [ "$action" = stop ]; then
    stop_daemons
    exit 0
fi
[ "$action" = start ] || usage

install_packages() {
    if command -v sbatch >/dev/null && command -v slurmctld >/dev/null \
        && command -v slurmd >/dev/null && command -v munged >/dev/null; then
        return 0
    fi
    if [ "$(id -u)" != 0 ]; then
        echo "local-slurm: Slurm is not installed and installing it needs root" >&2
        exit 3
    fi
    if ! command -v apt-get >/dev/null; then
        echo "local-slurm: Slurm is not installed and there is no apt-get here" >&2
        exit 3
    fi
    echo "local-slurm: installing slurmctld slurmd slurm-client munge" >&2
    export DEBIAN_FRONTEND=noninteractive
    # tests/test_docker.py may install openssh-server from another test worker at the
    # same moment: one apt-get (and one policy-rc.d) at a time, by the same lock.
    exec 9>/tmp/distnn-apt.lock
    flock 9
    # policy-rc.d: the packages' own service start-up is not wanted (and there may be
    # no init system to do it); this script starts its own daemons.
    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        created_policy=1
    fi
    local ok=1
    apt-get update -qq >"$state/apt.log" 2>&1 || ok=0
    if [ "$ok" = 1 ]; then
        apt-get install -y -qq --no-install-recommends \
            slurmctld slurmd slurm-client munge >>"$state/apt.log" 2>&1 || ok=0
    fi
    [ "$created_policy" = 1 ] && rm -f "$policy"
    exec 9>&-
    if [ "$ok" = 0 ]; then
        echo "local-slurm: apt-get could not install Slurm; its log:" >&2
        tail -n 20 "$state/apt.log" >&2
        exit 3
    fi
}

start_munge() {
    # A private munged: its own key and socket, so a system munge is left alone.
    if [ ! -s "$state/munge.key" ]; then
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile="$state/munge.key" --force
        else
            dd if=/dev/urandom of="$state/munge.key" bs=1024 count=1 status=none
        fi
    fi
    chmod 0400 "$state/munge.key"
    rm -f "$state/munge.socket" "$state/munge.socket.lock"
    munged --force --key-file="$state/munge.key" --socket="$state/munge.socket" \
        --pid-file="$state/munged.pid" --log-file="$state/munged.log" \
        --seed-file="$state/munge.seed"
}

write_conf() {
    local cpus
    cpus=$(nproc --all)
    # Job IDs from a random start: MPICH under srun --mpi=pmi2 names its shared memory
    # after the job and step IDs, so two instances both numbering from 1 (two test runs
    # at once) would attach each other's segments and hang.
    first_job=$(((RANDOM * 32768 + RANDOM) % 60000000 + 1))
    mkdir -p "$state/ctld" "$state/spool/$node" "$state/log"
    cat >"$state/slurm.conf" <<EOF
# Written by scripts/slurm/local-slurm.sh: one node, this machine.
ClusterName=distnn
FirstJobId=$first_job
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also sets how long a requeued job waits before it may start again
# (default 120 s, least 5); the scheduler runs every second instead of every 60.
AuthInfo=socket=$state/munge.socket,cred_expire=5
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/spool/%n
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=pmi2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
# Quick turnaround for tests: no long waits after a job or for an unresponsive node.
KillWait=10
MinJobAge=300
InactiveLimit=0
SlurmdTimeout=60
MessageTimeout=10
NodeName=$node NodeAddr=127.0.0.1 NodeHostname=$(hostname -s) CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
    printf 'export SLURM_CONF=%q\n' "$state/slurm.conf" >"$state/env"
}

wait_idle() {
    local i state_now=""
    for i in $(seq 300); do
        state_now=$(SLURM_CONF="$state/slurm.conf" sinfo -h -n "$node" -o %t 2>/dev/null || true)
        case "$state_now" in
        idle* | mix* | alloc*) return 0 ;;
        esac
        for daemon in slurmctld slurmd; do
            if [ -f "$state/$daemon.pid" ] && ! kill -0 "$(cat "$state/$daemon.pid")" 2>/dev/null; then
                echo "local-slurm: $daemon died" >&2
                return 1
            fi
        done
        [ "$i" = 1 ] || sleep 0.1
    done
    echo "local-slurm: node $node still '$state_now' after 30 s" >&2
    return 1
}

install_packages
stop_daemons
# From here on, a failure stops whatever this run had started.
trap stop_daemons EXIT
pick_ports
start_munge
write_conf
export SLURM_CONF="$state/slurm.conf"
# -c: start from a clean state (no jobs from an earlier run); -N: the node's name.
slurmctld -c -f "$SLURM_CONF"
slurmd -N "$node" -f "$SLURM_CONF"
if ! wait_idle; then
    for log in "$state/log/slurmctld.log" "$state/log/slurmd.log" "$state/munged.log"; do
        echo "--- $log" >&2
        tail -n 30 "$log" >&2 || true
    done
    exit 1
fi
trap - EXIT
echo "local-slurm: node $node up ($(nproc --all) CPUs); . $state/env to use it" >&2
