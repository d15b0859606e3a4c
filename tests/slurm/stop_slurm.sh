#!/usr/bin/env bash
# Stop the single-node test cluster started by tests/slurm/start_slurm.sh.
#
# Each daemon is stopped through its own pid file under the state directory
# ($DIFFGUARD_SLURM_DIR, default /tmp/diffguard-slurm); daemons that this script did not start
# are left alone. Idempotent: a daemon that is not running is skipped.
set -euo pipefail

STATE_DIR="${DIFFGUARD_SLURM_DIR:-/tmp/diffguard-slurm}"
STOP_TIMEOUT_S="${DIFFGUARD_SLURM_STOP_TIMEOUT:-20}"

log() { echo "stop_slurm: $*"; }

stop_pidfile() {
    local name="$1" pidfile="$STATE_DIR/run/$1.pid" pid
    if [ ! -f "$pidfile" ]; then
        log "$name: no pid file"
        return 0
    fi
    pid="$(cat "$pidfile")"
    if ! kill -0 "$pid" 2>/dev/null; then
        log "$name: not running (stale pid $pid)"
        rm -f "$pidfile"
        return 0
    fi
    kill -TERM "$pid"
    for _ in $(seq 1 $((STOP_TIMEOUT_S * 5))); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name: still running after ${STOP_TIMEOUT_S}s; sending KILL to $pid"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
    log "$name: stopped (pid $pid)"
}

# Compute daemon first so that it does not try to reach a vanished controller.
stop_pidfile slurmd
stop_pidfile slurmctld
stop_pidfile munged
