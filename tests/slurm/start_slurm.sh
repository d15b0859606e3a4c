#!/usr/bin/env bash
# Start a single-node SLURM cluster on this host: munged, slurmctld and slurmd, all as root.
#
# Idempotent: if `sinfo` already answers and the node is usable, nothing is started. Otherwise
# slurm.conf and cgroup.conf are written for THIS host (name from `hostname -s`, CPUs from
# `nproc`, memory from `free`) and the daemons are started in the background with pid files and
# logs under the state directory ($DIFFGUARD_SLURM_DIR, default /tmp/diffguard-slurm).
# Stop with tests/slurm/stop_slurm.sh. Run tests/slurm/setup_slurm.sh first to install.
set -euo pipefail

STATE_DIR="${DIFFGUARD_SLURM_DIR:-/tmp/diffguard-slurm}"
# Clients (sbatch, squeue, the snakemake plugin) read /etc/slurm/slurm.conf unless SLURM_CONF is
# set; writing it there makes `snakemake --profile slurm` work from any shell without extra env.
SLURM_CONF_PATH="${SLURM_CONF:-/etc/slurm/slurm.conf}"
MARKER="# written by diffguard tests/slurm/start_slurm.sh"
# How long to wait for the daemons to come up before giving up.
START_TIMEOUT_S="${DIFFGUARD_SLURM_START_TIMEOUT:-60}"
export PATH="$PATH:/usr/sbin:/sbin"

log() { echo "start_slurm: $*"; }
die() {
    echo "start_slurm: ERROR: $*" >&2
    for f in "$STATE_DIR"/log/*.log; do
        [ -f "$f" ] && { echo "--- tail of $f" >&2; tail -n 20 "$f" >&2; }
    done
    exit 1
}

node_ready() {
    # True when the controller answers and at least one node is idle/mixed/allocated.
    local states
    # `scontrol ping` fails at once when no controller runs (sinfo would retry for ~10 s).
    timeout 10 scontrol ping >/dev/null 2>&1 || return 1
    states="$(timeout 10 sinfo -h -o '%t' 2>/dev/null)" || return 1
    grep -Eq '^(idle|mix|alloc|comp)' <<<"$states"
}

pid_alive() {
    local pidfile="$1"
    [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

if node_ready; then
    log "cluster already up; nothing to do"
    sinfo
    exit 0
fi

for cmd in munged munge unmunge slurmctld slurmd sinfo scontrol; do
    command -v "$cmd" >/dev/null 2>&1 || die "$cmd not found; run tests/slurm/setup_slurm.sh first"
done
[ "$(id -u)" -eq 0 ] || die "must run as root (daemons run as root with SlurmUser=root)"

if [ -f "$SLURM_CONF_PATH" ] && ! grep -qF "$MARKER" "$SLURM_CONF_PATH"; then
    die "$SLURM_CONF_PATH exists and was not written by this script; refusing to overwrite it" \
        "(set SLURM_CONF to another path to use a private config)"
fi

mkdir -p "$STATE_DIR"/{ctld,spool,log,run} "$(dirname "$SLURM_CONF_PATH")"

NODE="$(hostname -s)"
CPUS="$(nproc)"
MEM_TOTAL_MB="$(free -m | awk '/^Mem:/ {print $2}')"
# slurmd drains a node whose real memory is below RealMemory; keep a margin for the OS and the
# kernel's rounding (5% or at least 256 MB).
MARGIN_MB=$((MEM_TOTAL_MB / 20 > 256 ? MEM_TOTAL_MB / 20 : 256))
REAL_MEM_MB=$((MEM_TOTAL_MB - MARGIN_MB))
# Stand-in GPUs announced by the node (see GresTypes below); 2 lets two GPU jobs run at once.
FAKE_GPUS="${DIFFGUARD_SLURM_FAKE_GPUS:-2}"
# The controller must be reachable by name; fall back to loopback when the name does not resolve.
if getent hosts "$NODE" >/dev/null 2>&1; then
    NODE_ADDR="$(getent hosts "$NODE" | awk '{print $1; exit}')"
else
    NODE_ADDR=127.0.0.1
fi

cat >"$SLURM_CONF_PATH" <<EOF
$MARKER
# Single-node test cluster for host $NODE; regenerated on every start.
ClusterName=diffguard
SlurmctldHost=$NODE($NODE_ADDR)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$STATE_DIR/run/slurmctld.pid
SlurmdPidFile=$STATE_DIR/run/slurmd.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmctldPort=6817
SlurmdPort=6818
# No cgroups (containers/sandboxes often lack a writable cgroup tree): track processes through
# /proc and do no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# CPUs and memory are both consumable, so --mem requests are checked like on a real cluster.
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
# Jobs without --mem would otherwise reserve the whole node's memory and run one at a time.
DefMemPerCPU=1024
SchedulerType=sched/backfill
# No slurmdbd: finished jobs are written to a text file (job completion log) instead.
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE_DIR/log/jobcomp.txt
# Keep finished jobs visible to squeue/scontrol for 10 min: the snakemake slurm plugin reads job
# states with squeue when sacct has no database behind it (needs MinJobAge >= 3 x its
# initial status-check delay).
MinJobAge=600
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MpiDefault=none
# No mail on this test node (the default sendmail path does not exist and slurmctld logs an error).
MailProg=/bin/true
# Stand-in GPUs: GRES "gpu" backed by empty files, so that jobs asking for GPUs (sbatch --gpus=N,
# as the profile sends for rules with resources gpu=N) are scheduled like on a GPU cluster and
# then run on this CPU-only node (the CPU configs set device: cpu). No CUDA device exists.
GresTypes=gpu
NodeName=$NODE NodeAddr=$NODE_ADDR CPUs=$CPUS RealMemory=$REAL_MEM_MB Gres=gpu:$FAKE_GPUS State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF

# gres.conf: the stand-in GPUs, one (empty, never opened) "device" file each; slurmd wants
# distinct file names.
mkdir -p "$STATE_DIR/gpu"
{
    echo "$MARKER"
    for i in $(seq 0 $((FAKE_GPUS - 1))); do
        touch "$STATE_DIR/gpu/fake-gpu$i"
        echo "NodeName=$NODE Name=gpu File=$STATE_DIR/gpu/fake-gpu$i"
    done
} >"$(dirname "$SLURM_CONF_PATH")/gres.conf"

# cgroup.conf sits beside slurm.conf; nothing uses cgroups, but keep it explicit.
cat >"$(dirname "$SLURM_CONF_PATH")/cgroup.conf" <<EOF
$MARKER
CgroupAutomount=no
ConstrainCores=no
ConstrainRAMSpace=no
ConstrainDevices=no
EOF
log "wrote $SLURM_CONF_PATH (node $NODE addr $NODE_ADDR CPUs=$CPUS RealMemory=${REAL_MEM_MB}MB)"

# --- munge -------------------------------------------------------------------------------
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "munged already answers"
else
    if [ ! -s /etc/munge/munge.key ]; then
        # The Debian package creates the key on install; create one if it is missing.
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
    # munged runs as root here; it insists that the key is owned by its own user.
    install -m 0400 -o root -g root /etc/munge/munge.key "$STATE_DIR/run/munge.key"
    mkdir -p /run/munge
    chmod 0755 /run/munge
    munged --force \
        --key-file="$STATE_DIR/run/munge.key" \
        --pid-file="$STATE_DIR/run/munged.pid" \
        --log-file="$STATE_DIR/log/munged.log" \
        --seed-file="$STATE_DIR/run/munged.seed" \
        --socket=/run/munge/munge.socket.2 ||
        die "munged failed to start"
    for _ in $(seq 1 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
        sleep 0.2
    done
    munge -n | unmunge >/dev/null || die "munge credentials do not round-trip"
    log "munged started (pid $(cat "$STATE_DIR/run/munged.pid"))"
fi

# --- slurmctld and slurmd ------------------------------------------------------------------
export SLURM_CONF="$SLURM_CONF_PATH"
if pid_alive "$STATE_DIR/run/slurmctld.pid"; then
    log "slurmctld already running"
else
    # -c: start clean (no saved jobs from an earlier run); daemonizes and writes its pid file.
    slurmctld -c -f "$SLURM_CONF_PATH" || die "slurmctld failed to start"
fi
if pid_alive "$STATE_DIR/run/slurmd.pid"; then
    log "slurmd already running"
else
    slurmd -f "$SLURM_CONF_PATH" || die "slurmd failed to start"
fi

deadline=$((SECONDS + START_TIMEOUT_S))
until node_ready; do
    if ((SECONDS > deadline)); then
        sinfo -N -l >&2 || true
        die "node not ready after ${START_TIMEOUT_S}s"
    fi
    # A node left DOWN/DRAIN by an earlier run is put back into service.
    if sinfo -h -o '%t' 2>/dev/null | grep -Eq '^(down|drain|drng)'; then
        scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true
    fi
    sleep 1
done
log "cluster up: slurmctld pid $(cat "$STATE_DIR/run/slurmctld.pid")," \
    "slurmd pid $(cat "$STATE_DIR/run/slurmd.pid")"
sinfo
