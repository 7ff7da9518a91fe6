#!/usr/bin/env bash
# Bring up the project's Slurm 22.05 test cluster on ONE Debian 12 machine, as root, without
# systemd: slurmctld + slurmdbd (+ MariaDB on loopback) in this machine's network namespace and
# TWO compute nodes, n1 and n2, each a slurmd in its own network namespace (its own address on a
# private /24 behind a bridge) and its own UTS namespace (`hostname` in a job prints n1 / n2).
# File system, users and the munge key are shared, as on a real cluster. Idempotent: a running
# cluster is left as is, and a node whose slurmd died (a test killed it) is started again.
#
#   tests/integration/slurm_up.sh         # then: export SLURM_CONF=$SLURM_ROOT/etc/slurm.conf
#   tests/integration/slurm_down.sh       # stops what this started (by pid), removes the network
#
# Why each setting (pitfalls met on this machine kind):
# - no systemd and policy-rc.d blocks service starts: every daemon is started by hand here;
# - without slurmdbd there is no sacct, and submitit then never sees a cancelled job finish;
# - AuthInfo=cred_expire=10: a requeued job would otherwise wait 120 s before it may run again;
# - batch_sched_delay=0,sched_min_interval=0,bf_interval=1: jobs start in ~1 s, not 2-3 s;
# - CPUs=4 per node with SlurmdParameters=config_overrides: several small jobs fit at once on 2
#   real cores; LLN=YES (least loaded node first) spreads array tasks over both nodes;
# - SlurmctldHost=<this host>(<bridge address>) and AccountingStorageHost=slurmctl: inside a node
#   namespace "localhost" is the node's own loopback, so nodes reach the controller by the bridge;
# - n1/n2 resolve to their namespace addresses (a marked /etc/hosts block): gloo binds the address
#   its hostname resolves to, and MASTER_ADDR=n1 must reach n1 from n2;
# - `nsenter --net` rather than `ip netns exec` (which also remounts /sys in a private mount
#   namespace); no ping on this machine: both slurmd registering proves the network;
# - a killed daemon stays a zombie ~2 s until PID 1 reaps it: state Z counts as gone;
# - jobs that call `scontrol requeue` need SLURM_CONF in their environment (sbatch exports it).
set -euo pipefail
ROOT=${SLURM_ROOT:-/tmp/awm-slurm}
NET=${SLURM_NET:-10.213.7}            # first three octets of a /24 used ONLY between these namespaces
BR=${SLURM_BRIDGE:-awmslurm0}
DBPORT=${SLURM_DB_PORT:-13306}        # MariaDB (127.0.0.1 only)
CPUS=${SLURM_CPUS:-4}                 # CPU slots advertised per node (may exceed the real cores)
NODES=(n1 n2)
CTL=slurmctl                          # the controller's name in /etc/hosts -> $NET.1 (the bridge)
H=$(hostname -s)                      # slurmctld must run on a host named in SlurmctldHost
export SLURM_CONF=$ROOT/etc/slurm.conf
PKGS=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server iproute2 util-linux)
HOSTS_BEGIN="# >>> awm slurm test cluster"
HOSTS_END="# <<< awm slurm test cluster"
T0=$SECONDS

running() { local s; s=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) && [ "$s" != Z ]; }
alive() { [ -s "$ROOT/run/$1.pid" ] && running "$(cat "$ROOT/run/$1.pid")"; }
wait_for() { # wait_for SECONDS CMD...
  local t=$1; shift; local end=$((SECONDS + t))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < end)) || { echo "timeout waiting for: $*" >&2; tail -n 30 "$ROOT"/log/*.log "$ROOT"/log/*.err 2>/dev/null >&2; return 1; }
    sleep 0.3
  done
}
# every node registered and usable (idle, or running jobs); none down/drained/unknown
nodes_up() { [ "$(sinfo -h -N -o '%N %t' 2>/dev/null | awk '$2 ~ /^(idle|mix|alloc)$/ {print $1}' | sort | tr '\n' ' ')" = "${NODES[*]} " ]; }
start_slurmd() { # own network namespace + own UTS namespace; slurmd daemonizes (pid in run/slurmd-$1.pid)
  nsenter --net="/run/netns/awm-slurm-$1" unshare --uts -- sh -c "hostname $1 && exec slurmd -N $1"
}

if alive slurmctld && alive slurmdbd; then
  dead=()
  for n in "${NODES[@]}"; do alive "slurmd-$n" || dead+=("$n"); done
  if ((${#dead[@]})) && [ -e "/run/netns/awm-slurm-${dead[0]}" ]; then
    # A node that "died" (its slurmd and jobs killed): boot it again and put it back in service.
    for n in "${dead[@]}"; do start_slurmd "$n"; done
    wait_for 60 sh -c "sinfo -h -n $(IFS=,; echo "${dead[*]}") -o %t | grep -vq '\*'"
    scontrol update NodeName="$(IFS=,; echo "${dead[*]}")" State=RESUME 2>/dev/null || true
    wait_for 60 nodes_up
    echo "slurm test cluster: restarted ${dead[*]} in $((SECONDS - T0)) s (SLURM_CONF=$SLURM_CONF)"
    exit 0
  fi
  if ! ((${#dead[@]})) && nodes_up; then
    echo "slurm test cluster already up (SLURM_CONF=$SLURM_CONF)"; exit 0
  fi
fi
# Half-started (crash, killed test run): stop what is left, remove stale namespaces/bridge, start clean.
"$(dirname "$0")/slurm_down.sh" >/dev/null 2>&1 || true

missing=()
for p in "${PKGS[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

rm -rf "$ROOT"/{etc,state,spool,log,run,mysql}
mkdir -p "$ROOT"/{etc,state,log,run,mysql}
for n in "${NODES[@]}"; do mkdir -p "$ROOT/spool/$n"; done

# --- network: bridge $BR ($NET.1) here, a veth into each node's namespace (renamed eth0 there, so
# GLOO_SOCKET_IFNAME/NCCL_SOCKET_IFNAME=eth0 is the same on every node). No default route in the
# node namespaces: they reach only $NET.0/24 and their own loopback.
ip link add "$BR" type bridge
ip addr add "$NET.1/24" dev "$BR"
ip link set "$BR" up
hosts="$NET.1 $CTL"$'\n'
i=11
for n in "${NODES[@]}"; do
  ns=awm-slurm-$n
  ip netns add "$ns"
  ip link add "awmh-$n" type veth peer name "awmc-$n"
  ip link set "awmc-$n" netns "$ns"
  ip -n "$ns" link set "awmc-$n" name eth0
  ip -n "$ns" addr add "$NET.$i/24" dev eth0
  ip -n "$ns" link set lo up
  ip -n "$ns" link set eth0 up
  ip link set "awmh-$n" master "$BR" up
  hosts+="$NET.$i $n"$'\n'
  i=$((i + 1))
done
sed -i "/^$HOSTS_BEGIN\$/,/^$HOSTS_END\$/d" /etc/hosts
printf '%s\n%s%s\n' "$HOSTS_BEGIN" "$hosts" "$HOSTS_END" >>/etc/hosts

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
SlurmctldHost=$H($NET.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=10
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$ROOT/state
SlurmdSpoolDir=$ROOT/spool/%n
SlurmctldPidFile=$ROOT/run/slurmctld.pid
SlurmdPidFile=$ROOT/run/slurmd-%n.pid
SlurmctldLogFile=$ROOT/log/slurmctld.log
SlurmdLogFile=$ROOT/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$CTL
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
EOF
i=11
for n in "${NODES[@]}"; do
  echo "NodeName=$n NodeAddr=$NET.$i NodeHostname=$n CPUs=$CPUS RealMemory=4000 State=UNKNOWN" >>"$ROOT/etc/slurm.conf"
  i=$((i + 1))
done
echo "PartitionName=debug Nodes=$(IFS=,; echo "${NODES[*]}") Default=YES MaxTime=INFINITE LLN=YES State=UP" >>"$ROOT/etc/slurm.conf"

slurmdbd                      # daemonizes; reads slurmdbd.conf next to $SLURM_CONF
wait_for 30 sacctmgr -n list cluster
slurmctld                     # daemonizes; registers cluster 'awmci' with slurmdbd
wait_for 30 scontrol ping
for n in "${NODES[@]}"; do start_slurmd "$n"; done
wait_for 60 nodes_up
echo "slurm test cluster up in $((SECONDS - T0)) s, nodes ${NODES[*]}: export SLURM_CONF=$SLURM_CONF"
