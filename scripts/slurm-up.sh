#!/usr/bin/env bash
# Make sure a Slurm cluster answers; otherwise set up and start a one-node one on loopback.
#
# Idempotent: if `sinfo` already answers and shows an idle/mixed/allocated node, do nothing.
# Otherwise: install slurmctld, slurmd, slurm-client and munge from the distribution's
# packages (only those missing), write /etc/slurm/slurm.conf for this host alone (its short
# hostname on 127.0.0.1, every CPU but at least 4, no GPUs, proctrack/linuxproc, task/none, no cgroups:
# sandboxes and CI containers refuse cgroup delegation), create a munge key if there is
# none, and start munged, slurmctld and slurmd as daemons. Jobs stay known to slurmctld for
# an hour after they end (MinJobAge), which lets `squeue --states=all` report how they
# ended when there is no accounting database (sacct then says accounting is disabled).
#
# This is a test cluster: one partition `debug` (default, no time limit), no accounting.
# docs/scale-out.md says how a real cluster differs.
#
# Env:
#   LLEM_SLURM_LOG_DIR  daemon logs        (default /tmp/llem-slurm)
#   LLEM_SLURM_WAIT_S   seconds to wait    (default 60)
set -euo pipefail

log_dir="${LLEM_SLURM_LOG_DIR:-/tmp/llem-slurm}"
wait_s="${LLEM_SLURM_WAIT_S:-60}"
conf=/etc/slurm/slurm.conf

node_ready() {
    # Our own one-node cluster also needs its daemons here (slurmctld notices a dead slurmd
    # only after SlurmdTimeout); a real cluster's daemons live elsewhere.
    if grep -q '^# written by llenergymeasure' "$conf" 2>/dev/null; then
        pgrep -x slurmctld >/dev/null 2>&1 && pgrep -x slurmd >/dev/null 2>&1 || return 1
    fi
    sinfo --noheader --responding -o '%t' 2>/dev/null | grep -Eq '^(idle|mix|alloc)'
}

if command -v sinfo >/dev/null 2>&1 && node_ready; then
    echo "slurm-up: cluster already answers ($(sinfo --version 2>/dev/null))"
    exit 0
fi

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
    sudo_cmd=(sudo -n)
fi

missing=()
command -v slurmctld >/dev/null 2>&1 || missing+=(slurmctld)
command -v slurmd >/dev/null 2>&1 || missing+=(slurmd)
command -v sbatch >/dev/null 2>&1 || missing+=(slurm-client)
command -v munged >/dev/null 2>&1 || missing+=(munge)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "slurm-up: installing ${missing[*]}"
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq \
        --no-install-recommends "${missing[@]}"
fi

host="$(hostname -s)"
# At least 4 CPUs even on a smaller box (config_overrides below: slurmd believes slurm.conf),
# so the tests' two 1-CPU jobs and the preflight probe run side by side anywhere.
cpus="$(nproc)"
[ "$cpus" -ge 4 ] || cpus=4
mem_mb="$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)"
"${sudo_cmd[@]}" mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd "$log_dir" \
    /run/munge /var/log/munge /var/lib/munge
"${sudo_cmd[@]}" chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true

if ! grep -q '^# written by llenergymeasure scripts/slurm-up.sh' "$conf" 2>/dev/null; then
    [ ! -f "$conf" ] || "${sudo_cmd[@]}" cp "$conf" "$conf.before-llem"
fi
"${sudo_cmd[@]}" tee "$conf" >/dev/null <<EOF
# written by llenergymeasure scripts/slurm-up.sh: a one-node test cluster on loopback
ClusterName=llem
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=${log_dir}/slurmctld.log
SlurmdLogFile=${log_dir}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=3600
KillWait=10
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
SchedulerParameters=sched_interval=2
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem_mb} State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF

# Slurm 23.02+ loads a cgroup plugin in slurmd even with task/none; CI containers cannot
# delegate cgroups, so turn it off there (22.05 has no "disabled" plugin and needs no file).
slurm_major="$(slurmd -V 2>/dev/null | awk '{split($2, v, "."); print v[1]}')"
if [ "${slurm_major:-0}" -ge 23 ] \
    && { [ ! -f /etc/slurm/cgroup.conf ] || grep -q '^# written by llenergymeasure' /etc/slurm/cgroup.conf; }; then
    printf '# written by llenergymeasure scripts/slurm-up.sh\nCgroupPlugin=disabled\n' \
        | "${sudo_cmd[@]}" tee /etc/slurm/cgroup.conf >/dev/null
fi

if [ ! -s /etc/munge/munge.key ]; then
    "${sudo_cmd[@]}" mkdir -p /etc/munge
    "${sudo_cmd[@]}" dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    "${sudo_cmd[@]}" chown munge:munge /etc/munge/munge.key 2>/dev/null || true
    "${sudo_cmd[@]}" chmod 400 /etc/munge/munge.key
fi
if ! munge -n </dev/null >/dev/null 2>&1; then
    "${sudo_cmd[@]}" runuser -u munge -- /usr/sbin/munged --force 2>/dev/null \
        || "${sudo_cmd[@]}" /usr/sbin/munged --force
fi

if ! pgrep -x slurmctld >/dev/null 2>&1; then
    "${sudo_cmd[@]}" /usr/sbin/slurmctld
fi
if ! pgrep -x slurmd >/dev/null 2>&1; then
    "${sudo_cmd[@]}" /usr/sbin/slurmd
fi

for _ in $(seq "$wait_s"); do
    if node_ready; then
        echo "slurm-up: one-node cluster ${host} up ($(sinfo --version), ${cpus} CPUs)"
        exit 0
    fi
    # A node that was down (an earlier run) comes back once the daemons answer.
    "${sudo_cmd[@]}" scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true
    sleep 1
done
echo "slurm-up: the cluster did not come up within ${wait_s}s; logs in ${log_dir}" >&2
sinfo -N -l >&2 || true
tail -n 20 "${log_dir}/slurmctld.log" "${log_dir}/slurmd.log" >&2 || true
exit 1
