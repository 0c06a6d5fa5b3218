#!/bin/sh
# The image's entrypoint.
#
#   entrypoint.sh [COMMAND...]     run COMMAND (the image's CMD: mpirun -n 4 python -m distnn.train)
#   entrypoint.sh worker           a cluster node: sshd on port 2222, as this (non-root) user,
#                                  accepting the key the launcher put in $DISTNN_KEYS
#   entrypoint.sh launcher ARGS…   the cluster's launcher: make the key if there is none, wait
#                                  for every worker's sshd, then
#                                  mpiexec -hosts $DISTNN_HOSTS -n $DISTNN_RANKS python -m distnn.train ARGS…
#
# DISTNN_HOSTS is hydra's host list, e.g. "worker1:2,worker2:2" (2 ranks on each).
# DISTNN_KEYS (default /cluster/keys) is a volume shared by the launcher and the workers.
set -eu

keys=${DISTNN_KEYS:-/cluster/keys}
port=${DISTNN_SSH_PORT:-2222}

worker() {
    dir=$HOME/.sshd
    mkdir -p "$dir"
    chmod 700 "$dir"
    [ -f "$dir/host_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -f "$dir/host_ed25519"
    cat >"$dir/sshd_config" <<EOF
Port $port
HostKey $dir/host_ed25519
PidFile $dir/sshd.pid
AuthorizedKeysFile $keys/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
UsePAM no
X11Forwarding no
PrintMotd no
LogLevel ERROR
EOF
    echo "worker $(hostname): sshd on port $port, keys from $keys"
    exec /usr/sbin/sshd -D -e -f "$dir/sshd_config"
}

launcher() {
    if [ ! -f "$keys/id_ed25519" ]; then
        rm -f "$keys/new_ed25519" "$keys/new_ed25519.pub"
        ssh-keygen -q -t ed25519 -N '' -C "distnn launcher" -f "$keys/new_ed25519"
        cp "$keys/new_ed25519.pub" "$keys/authorized_keys.new"
        chmod 600 "$keys/authorized_keys.new"
        mv "$keys/authorized_keys.new" "$keys/authorized_keys"
        mv "$keys/new_ed25519.pub" "$keys/id_ed25519.pub"
        mv "$keys/new_ed25519" "$keys/id_ed25519"
    fi
    # hydra runs plain `ssh HOST …`: the port, key and host-key policy come from here.
    # The workers' host keys are made when their containers start, hence no known_hosts.
    mkdir -p "$HOME/.ssh"
    chmod 700 "$HOME/.ssh"
    cat >"$HOME/.ssh/config" <<EOF
Host *
    Port $port
    IdentityFile $keys/id_ed25519
    StrictHostKeyChecking no
    UserKnownHostsFile /dev/null
    LogLevel ERROR
    BatchMode yes
    ConnectTimeout 5
EOF
    hosts=${DISTNN_HOSTS:?set DISTNN_HOSTS, e.g. worker1:2,worker2:2}
    for entry in $(echo "$hosts" | tr ',' ' '); do
        host=${entry%%:*}
        tries=0
        until ssh "$host" true 2>/dev/null; do
            tries=$((tries + 1))
            if [ "$tries" -ge "${DISTNN_WAIT:-60}" ]; then
                echo "launcher: no ssh to $host:$port after ${DISTNN_WAIT:-60} tries" >&2
                ssh "$host" true
                exit 1
            fi
            sleep 1
        done
    done
    echo "launcher: mpiexec -hosts $hosts -n ${DISTNN_RANKS:?set DISTNN_RANKS} python -m distnn.train $*"
    exec mpiexec -hosts "$hosts" -n "$DISTNN_RANKS" python -m distnn.train "$@"
}

case "${1:-}" in
worker) worker ;;
launcher)
    shift
    launcher "$@"
    ;;
*) exec "$@" ;;
esac
