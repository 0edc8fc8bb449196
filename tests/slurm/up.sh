#!/usr/bin/env bash
# Bring up a two-node SLURM cluster on this one host (Debian packages, root, no systemd):
# slurmctld on the host; two slurmd, kn1 and kn2, each in a network namespace of its own
# (a veth pair on a bridge: 10.201.0.11 and .12, the controller at 10.201.0.1) and a UTS
# namespace of its own (hostname kn1 / kn2). The nodes share the host's filesystem.
#   bash tests/slurm/up.sh          # installs slurmctld slurmd slurm-client munge if missing
# Each node declares 2 CPUs (SlurmdParameters=config_overrides: more than this host may
# have), so a job asking for 2 CPUs fits one node and fills it.
# Idempotent: what is up stays up; a cluster started from another slurm.conf (the older
# one-node cluster) is stopped and restarted from this one.
# Prints "slurm: up" when `sinfo` shows both nodes idle; exits 1 with the reason otherwise.
# The cluster tests (tests/test_slurm.py, tests/test_slurm_nodes.py) run against it, and
# skip when it is not up.
set -euo pipefail

[ "$(id -u)" = 0 ] || { echo "slurm: not started: needs root" >&2; exit 1; }
missing=()
for cmd in slurmctld slurmd munged sinfo; do command -v $cmd >/dev/null || missing+=($cmd); done
command -v ip >/dev/null || missing+=(ip)
command -v nsenter >/dev/null && command -v unshare >/dev/null || missing+=(util-linux)
if [ ${#missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null || { echo "slurm: not started: no apt-get" >&2; exit 1; }
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq slurmctld slurmd slurm-client munge \
        iproute2 util-linux >/dev/null
fi

NODES=(kn1 kn2)
NET=10.201.0
BRIDGE=kmodel-br0
conf=/etc/slurm/slurm.conf
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 4 / 10 ))  # 40% each
mkdir -p /etc/slurm /var/spool/slurmctld /var/log/slurm /run/munge
for n in "${NODES[@]}"; do mkdir -p "/var/spool/slurmd/$n"; done
new=$(mktemp)
cat > "$new" <<CONF
ClusterName=kmodel-test
SlurmctldHost=localhost($NET.1)
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
ReturnToService=2
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd-%n.pid
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
MinJobAge=300
DefMemPerCPU=1000
NodeName=kn1 NodeAddr=$NET.11 CPUs=2 RealMemory=$mem State=UNKNOWN
NodeName=kn2 NodeAddr=$NET.12 CPUs=2 RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=kn1,kn2 Default=YES MaxTime=INFINITE State=UP
CONF

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
stop() {  # the daemon of pid file $1, waited for
    local pid
    alive "$1" || return 0
    pid=$(cat "$1"); kill "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
}
fresh=
if ! cmp -s "$new" "$conf"; then  # another cluster's config: stop its daemons, clear its state
    stop /run/slurmctld.pid; stop /run/slurmd.pid
    for n in "${NODES[@]}"; do stop "/run/slurmd-$n.pid"; done
    mv "$new" "$conf"; chmod 0644 "$conf"; fresh=-c
else
    rm -f "$new"
fi

# names for the nodes' addresses (slurmd and srun look their own host up)
for i in 1 2; do
    grep -qE "^$NET\.1$i[[:space:]]+kn$i\$" /etc/hosts || echo "$NET.1$i kn$i" >> /etc/hosts
done

# the network: a bridge on the host, each node's namespace on it through a veth pair
if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    ip addr add "$NET.1/24" dev "$BRIDGE"
fi
ip link set "$BRIDGE" up
for i in 1 2; do
    n=kn$i
    [ -e "/run/netns/$n" ] || ip netns add "$n"
    if ! ip link show "$n-h" >/dev/null 2>&1; then
        ip link add "$n-h" type veth peer name "$n-n"
        ip link set "$n-n" netns "$n"
        ip link set "$n-h" master "$BRIDGE"
    fi
    ip link set "$n-h" up
    ip -n "$n" link set lo up
    [[ "$(ip -n "$n" addr show dev "$n-n")" == *" $NET.1$i/"* ]] \
        || ip -n "$n" addr add "$NET.1$i/24" dev "$n-n"
    ip -n "$n" link set "$n-n" up
done

# munge: a key, its folders owned by the munge user, the daemon as that user (its socket
# is a file: the nodes' namespaces reach it)
[ -s /etc/munge/munge.key ] || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key
pgrep -x munged >/dev/null || runuser -u munge -- munged

alive /run/slurmctld.pid || slurmctld $fresh
for n in "${NODES[@]}"; do
    # its own network and hostname: jobs on it see `hostname` = kn1 / kn2
    alive "/run/slurmd-$n.pid" || nsenter --net="/run/netns/$n" \
        unshare --uts sh -c "hostname $n && exec slurmd -N $n"
done
for _ in $(seq 1 120); do
    if [ "$(sinfo -h -N -o '%N %T' 2>/dev/null | grep -cE ' (idle|mixed|allocated)$')" = 2 ]; then
        for n in "${NODES[@]}"; do scontrol update nodename=$n state=resume >/dev/null 2>&1 || true; done
        echo "slurm: up (2 nodes: ${NODES[*]}, 2 CPUs each, partition debug)"
        exit 0
    fi
    sleep 0.5
done
echo "slurm: not started: the nodes did not become idle; see /var/log/slurm/" >&2
sinfo -N >&2 || true
exit 1
