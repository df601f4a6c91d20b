#!/usr/bin/env bash
# A one-node SLURM cluster on localhost (Debian 12, Slurm 22.05, as root) for CI and for trying the SLURM
# profile on a workstation:  .ci/local-slurm.sh start | stop
# Facts that matter here: NodeName and SlurmctldHost must equal `hostname -s`; proctrack/linuxproc (cgroup
# tracking fails in containers); select/cons_tres for parallel jobs; RealMemory at most what `slurmd -C` says.
# No accounting database: the workflow's SLURM runs use `squeue` for job status (see tests/test_slurm.py), and
# finished jobs stay readable with `scontrol show job` for a day (MinJobAge).
# Two partitions on the one node, as on a cluster whose default partition is not the GPU one: cpu (the default)
# and gpu, and two stand-in GPUs (generic resources on /dev/zero and /dev/full: jobs that ask for --gpus are
# scheduled, and run on the CPU), so that tests can read back where each job was sent.
set -euo pipefail
state=${SLURM_LOCAL_DIR:-${TMPDIR:-/tmp}/resmem-slurm}
host=$(hostname -s)

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
halt() {  # stop the daemon whose pid file is $1 and wait until it is gone
  if alive "$1"; then
    local pid; pid=$(cat "$1"); kill "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
  fi
  rm -f "$1"
}

case "${1:-start}" in
stop)
  squeue -h -o %i 2>/dev/null | xargs -r scancel || true
  halt "$state/run/slurmd.pid"; halt "$state/run/slurmctld.pid"; halt /run/munge/munged.pid
  exit 0 ;;
start) ;;
*) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac

packages="slurmctld slurmd slurm-client munge"
if ! dpkg -s $packages >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $packages >/dev/null
fi
mkdir -p "$state"/{log,run,state,spool} /etc/slurm /run/munge
printf 'AutoDetect=off\nNodeName=%s Name=gpu File=/dev/zero\nNodeName=%s Name=gpu File=/dev/full\n' "$host" "$host" \
  > "$state/gres.conf"
memory=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
cat > "$state/slurm.conf" <<EOF
ClusterName=resmem-ci
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$state/state
SlurmdSpoolDir=$state/spool
SlurmctldPidFile=$state/run/slurmctld.pid
SlurmdPidFile=$state/run/slurmd.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/linux
GresTypes=gpu
AccountingStorageType=accounting_storage/none
ReturnToService=2
MpiDefault=none
MailProg=/bin/true
# Tests read finished jobs back with scontrol after their run: keep the records a day, not the default 300 s.
MinJobAge=86400
DefMemPerCPU=1024
NodeName=$host NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$(( memory * 9 / 10 )) Gres=gpu:2 State=UNKNOWN
PartitionName=cpu Nodes=ALL Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=ALL Default=NO MaxTime=INFINITE State=UP
EOF
ln -sfn "$state/slurm.conf" /etc/slurm/slurm.conf
ln -sfn "$state/gres.conf" /etc/slurm/gres.conf

if [ ! -s /etc/munge/munge.key ]; then
  mungekey -c -k /etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key && chmod 600 /etc/munge/munge.key
fi
chown munge:munge /run/munge
alive /run/munge/munged.pid || runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
alive "$state/run/slurmctld.pid" || slurmctld
alive "$state/run/slurmd.pid" || slurmd
for _ in $(seq 150); do
  [ "$(sinfo -h -n "$host" -o %T 2>/dev/null)" = idle ] && break
  sleep 0.2
done
[ "$(sinfo -h -n "$host" -o %T)" = idle ] || scontrol update NodeName="$host" State=RESUME
sinfo
