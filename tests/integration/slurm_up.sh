#!/usr/bin/env bash
# Bring up the project's one-node Slurm 22.05 test cluster (with accounting: slurmdbd + MariaDB)
# on a Debian 12 machine as root, without systemd. Idempotent: a running cluster is left as is.
#
#   tests/integration/slurm_up.sh         # then: export SLURM_CONF=$SLURM_ROOT/etc/slurm.conf
#   tests/integration/slurm_down.sh       # stops exactly the daemons started here, by pid
#
# Why each setting (pitfalls met on this machine kind):
# - no systemd and policy-rc.d blocks service starts: every daemon is started by hand here;
# - without slurmdbd there is no sacct, and submitit then never sees a cancelled job finish;
# - AuthInfo=cred_expire=10: a requeued job would otherwise wait 120 s before it may run again;
# - batch_sched_delay=0,sched_min_interval=0,bf_interval=1: jobs start in ~1 s, not 2-3 s;
# - CPUs=4 with SlurmdParameters=config_overrides: a 2-task job and an array task fit at once
#   on a 2-core machine;
# - jobs that call `scontrol requeue` need SLURM_CONF in their environment (sbatch exports it).
set -euo pipefail
ROOT=${SLURM_ROOT:-/tmp/awm-slurm}
DBPORT=${SLURM_DB_PORT:-13306}
H=$(hostname -s)
export SLURM_CONF=$ROOT/etc/slurm.conf
PKGS=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)

alive() { [ -s "$ROOT/run/$1.pid" ] && kill -0 "$(cat "$ROOT/run/$1.pid")" 2>/dev/null; }
wait_for() { # wait_for SECONDS CMD...
  local t=$1; shift; local end=$((SECONDS + t))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < end)) || { echo "timeout waiting for: $*" >&2; tail -n 30 "$ROOT"/log/*.log "$ROOT"/log/*.err 2>/dev/null >&2; return 1; }
    sleep 0.3
  done
}

if alive slurmctld && alive slurmd && alive slurmdbd && sinfo -h -o %T 2>/dev/null | grep -qx idle; then
  echo "slurm test cluster already up (SLURM_CONF=$SLURM_CONF)"
  exit 0
fi
# A half-started cluster (crash, killed test run): stop what is left, then start clean.
[ -d "$ROOT/run" ] && "$(dirname "$0")/slurm_down.sh" >/dev/null 2>&1 || true

missing=()
for p in "${PKGS[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

rm -rf "$ROOT"/{etc,state,spool,log,run,mysql}
mkdir -p "$ROOT"/{etc,state,spool,log,run,mysql}

# --- munge: reuse a munged that is already running (not ours to stop), else start one.
[ -s /etc/munge/munge.key ] || { mungekey --create --keyfile=/etc/munge/munge.key; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  install -d -o munge -g munge -m 0755 /run/munge
  rm -f /run/munge/munged.pid
  runuser -u munge -- /usr/sbin/munged
  wait_for 10 test -s /run/munge/munged.pid
  cp /run/munge/munged.pid "$ROOT/run/munged.pid"
  wait_for 10 sh -c 'munge -n | unmunge'
fi

# --- MariaDB for slurmdbd (private datadir, loopback only, its own port)
mariadb-install-db --no-defaults --datadir="$ROOT/mysql" --user=root --auth-root-authentication-method=socket \
  --skip-test-db >"$ROOT/log/mariadb-install.log" 2>&1
mariadbd --no-defaults --datadir="$ROOT/mysql" --socket="$ROOT/run/mysqld.sock" --pid-file="$ROOT/run/mysqld.pid" \
  --bind-address=127.0.0.1 --port="$DBPORT" --user=root --skip-log-bin --innodb-buffer-pool-size=64M \
  --innodb-lock-wait-timeout=900 --log-error="$ROOT/log/mariadb.err" </dev/null >/dev/null 2>&1 &
wait_for 60 mariadb --no-defaults -S "$ROOT/run/mysqld.sock" -uroot -e 'select 1'
mariadb --no-defaults -S "$ROOT/run/mysqld.sock" -uroot -e "
  CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurmpw'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
  CREATE USER 'slurm'@'localhost' IDENTIFIED BY 'slurmpw'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"

cat >"$ROOT/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
DebugLevel=info
LogFile=$ROOT/log/slurmdbd.log
PidFile=$ROOT/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DBPORT
StorageUser=slurm
StoragePass=slurmpw
StorageLoc=slurm_acct_db
EOF
chmod 600 "$ROOT/etc/slurmdbd.conf"

cat >"$ROOT/etc/slurm.conf" <<EOF
ClusterName=awmci
SlurmctldHost=$H(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=10
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$ROOT/state
SlurmdSpoolDir=$ROOT/spool
SlurmctldPidFile=$ROOT/run/slurmctld.pid
SlurmdPidFile=$ROOT/run/slurmd.pid
SlurmctldLogFile=$ROOT/log/slurmctld.log
SlurmdLogFile=$ROOT/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=300
Waittime=0
NodeName=$H NodeAddr=127.0.0.1 CPUs=${SLURM_CPUS:-4} RealMemory=8000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

slurmdbd                      # daemonizes; reads slurmdbd.conf next to $SLURM_CONF
wait_for 30 sacctmgr -n list cluster
slurmctld                     # daemonizes; registers cluster 'awmci' with slurmdbd
slurmd
wait_for 60 sh -c "sinfo -h -n $H -o %T | grep -qx idle"
echo "slurm test cluster up: export SLURM_CONF=$SLURM_CONF"
