#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for sweep's Slurm tests (CI runs it as root).
# Installs slurmctld, slurmd, slurm-client and munge from Debian's packages, writes a
# configuration with 4 fake GPUs (gres.conf over /dev/fakegpu0-3), starts munged, slurmctld and
# slurmd without systemd, and waits until the node is idle. Idempotent: when the cluster already
# answers it only checks it and returns. Logs: /var/log/slurm/{slurmctld,slurmd}.log.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
  echo "slurm-up.sh: must run as root (it installs packages and starts daemons)" >&2
  exit 2
fi

ready() {
  scontrol ping 2>/dev/null | grep -q 'is UP' &&
    sinfo -h -N -o '%T' 2>/dev/null | grep -Eq '^(idle|mixed|allocated)'
}

if command -v scontrol >/dev/null && ready; then
  echo "slurm-up.sh: cluster already up"
  sinfo
  exit 0
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null ||
  ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  # Keep package scripts from starting daemons (there is no init system to run them).
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  apt-get update -q
  apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge
  rm -f /usr/sbin/policy-rc.d
fi

mkdir -p /etc/slurm /var/lib/slurm/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
cpus=$(nproc)
[ "$cpus" -lt 4 ] && cpus=4
cat >/etc/slurm/slurm.conf <<CONF
ClusterName=ci
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=512
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=900
KillWait=5
SchedulerParameters=sched_interval=2
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=/var/log/slurm/jobcomp.log
JobRequeue=1
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=16000 Gres=gpu:4 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=02:00:00 State=UP
CONF
cat >/etc/slurm/cgroup.conf <<CONF
CgroupPlugin=cgroup/v1
CONF
for i in 0 1 2 3; do
  [ -e /dev/fakegpu$i ] || mknod /dev/fakegpu$i c 1 3
done
cat >/etc/slurm/gres.conf <<CONF
AutoDetect=off
NodeName=localhost Name=gpu File=/dev/fakegpu[0-3]
CONF

# munge: a key, then the daemon as the munge user.
if [ ! -s /etc/munge/munge.key ]; then
  if command -v mungekey >/dev/null; then mungekey -c -f -k /etc/munge/munge.key; else
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; fi
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
chmod 0700 /etc/munge
chmod 0400 /etc/munge/munge.key
# Whether a daemon runs (a killed one not yet reaped is a zombie and does not count).
running() { pgrep -x -r R,S,D "$1" >/dev/null; }

if ! running munged; then
  if command -v runuser >/dev/null; then runuser -u munge -- /usr/sbin/munged; else /usr/sbin/munged --force; fi
fi

if ! running slurmctld; then
  slurmctld -c
fi
if ! running slurmd; then
  slurmd
fi

for _ in $(seq 1 60); do
  if ready; then
    # A node left down or drained by an earlier run comes back.
    scontrol update NodeName=localhost State=RESUME 2>/dev/null || true
    echo "slurm-up.sh: cluster up"
    sinfo
    exit 0
  fi
  state=$(sinfo -h -N -o '%T' 2>/dev/null || true)
  case "$state" in
    down* | drain* | inval*) scontrol update NodeName=localhost State=RESUME 2>/dev/null || true ;;
  esac
  sleep 1
done
echo "slurm-up.sh: the cluster did not come up; last log lines:" >&2
tail -n 30 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
exit 1
