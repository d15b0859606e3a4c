#!/usr/bin/env bash
# Install a single-node SLURM (Debian slurm-wlm) and munge if they are missing.
#
# Idempotent: when sbatch, slurmctld, slurmd, munged and sacct are already on PATH nothing is
# installed. Needs root and apt-get (the CI/developer machines are Debian and run as root).
set -euo pipefail

need=()
for cmd in sbatch squeue sacct scontrol sinfo slurmctld slurmd munged; do
    command -v "$cmd" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin" command -v "$cmd" >/dev/null 2>&1 \
        || need+=("$cmd")
done
if [ "${#need[@]}" -eq 0 ]; then
    echo "setup_slurm: slurm and munge already installed"
    exit 0
fi
echo "setup_slurm: missing ${need[*]}; installing slurm-wlm and munge"

if [ "$(id -u)" -ne 0 ]; then
    echo "setup_slurm: must run as root to apt-get install (missing: ${need[*]})" >&2
    exit 2
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup_slurm: apt-get not found; install slurm-wlm and munge by hand" >&2
    exit 2
fi

export DEBIAN_FRONTEND=noninteractive
# Package lists may be absent or stale on a fresh machine: always refresh before installing.
apt-get update -qq
# slurm-wlm pulls slurmctld + slurmd + slurm-client (sbatch, sacct, ...); munge authenticates.
# --no-install-recommends keeps the install small (no slurmdbd/mariadb, no docs).
apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
echo "setup_slurm: installed slurm-wlm $(dpkg-query -W -f='${Version}' slurm-wlm)"
