#!/usr/bin/env bash
# Stop the test cluster started by slurm_up.sh: cancel its jobs, stop each daemon it started by the
# pid it recorded (newest first; a munged that was running before is left alone), kill whatever is
# left in the node namespaces, then delete the namespaces, veths and bridge and its /etc/hosts block.
ROOT=${SLURM_ROOT:-/tmp/awm-slurm}
BR=${SLURM_BRIDGE:-awmslurm0}
NODES=(n1 n2)
export SLURM_CONF=$ROOT/etc/slurm.conf
# A killed daemon stays a zombie until PID 1 reaps it (~2 s on this machine kind): state Z is gone.
running() { local s; s=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) && [ "$s" != Z ]; }
alive() { [ -s "$ROOT/run/$1.pid" ] && running "$(cat "$ROOT/run/$1.pid")"; }

if alive slurmctld; then
  ids=$(squeue -h -o %A 2>/dev/null | sort -u)
  if [ -n "$ids" ]; then
    # shellcheck disable=SC2086
    scancel $ids 2>/dev/null
    for _ in $(seq 50); do [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.2; done
  fi
fi
# slurmd = the one-node layout of earlier versions of these scripts
for name in slurmd-n2 slurmd-n1 slurmd slurmctld slurmdbd mysqld munged; do
  pf="$ROOT/run/$name.pid"
  [ -s "$pf" ] || continue
  p=$(cat "$pf")
  if kill "$p" 2>/dev/null; then
    for _ in $(seq 100); do running "$p" || break; sleep 0.1; done
    running "$p" && kill -9 "$p"
    echo "stopped $name ($p)"
  fi
  rm -f "$pf"
done
for n in "${NODES[@]}"; do
  ns=/run/netns/awm-slurm-$n
  if [ -e "$ns" ]; then  # job steps that outlived their slurmd (a killed node) must not outlive the node
    inode=$(stat -L -c %i "$ns")
    for d in /proc/[0-9]*; do
      [ "$(stat -L -c %i "$d/ns/net" 2>/dev/null)" = "$inode" ] && kill -9 "${d#/proc/}" 2>/dev/null && echo "killed ${d#/proc/} on $n"
    done
  fi
  ip link del "awmh-$n" 2>/dev/null && echo "deleted veth awmh-$n"
  ip netns del "awm-slurm-$n" 2>/dev/null && echo "deleted netns awm-slurm-$n"
done
ip link del "$BR" 2>/dev/null && echo "deleted bridge $BR"
sed -i '/^# >>> awm slurm test cluster$/,/^# <<< awm slurm test cluster$/d' /etc/hosts
exit 0
