#!/usr/bin/env bash
# Bring up a one-node SLURM cluster on localhost (Debian packages, root, no systemd).
#   bash tests/slurm/up.sh          # installs slurmctld slurmd slurm-client munge if missing
# Prints "slurm: up" when `sinfo` shows the node idle; exits 1 with the reason otherwise.
# The cluster tests (tests/test_slurm.py) run against it, and skip when it is not up.
set -euo pipefail

[ "$(id -u)" = 0 ] || { echo "slurm: not started: needs root" >&2; exit 1; }
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
    || ! command -v munged >/dev/null || ! command -v sinfo >/dev/null; then
    command -v apt-get >/dev/null || { echo "slurm: not started: no apt-get" >&2; exit 1; }
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
fi

conf=/etc/slurm/slurm.conf
cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 8 / 10 ))
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
cat > "$conf" <<CONF
ClusterName=kmodel-test
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
ReturnToService=2
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
MinJobAge=300
DefMemPerCPU=1000
NodeName=localhost CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF

# munge: a key, its folders owned by the munge user, the daemon as that user
[ -s /etc/munge/munge.key ] || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key
pgrep -x munged >/dev/null || runuser -u munge -- munged

pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd -N localhost
for _ in $(seq 1 60); do
    if sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
        scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true
        echo "slurm: up ($cpus CPUs, partition debug)"
        exit 0
    fi
    sleep 0.5
done
echo "slurm: not started: the node did not become idle; see /var/log/slurm/" >&2
sinfo >&2 || true
exit 1
