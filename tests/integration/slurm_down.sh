#!/usr/bin/env bash
# Stop the test cluster started by slurm_up.sh: cancel its jobs, then stop each daemon it started
# by the pid it recorded, newest first (a munged that was running before is left alone).
ROOT=${SLURM_ROOT:-/tmp/awm-slurm}
export SLURM_CONF=$ROOT/etc/slurm.conf

alive() { [ -s "$ROOT/run/$1.pid" ] && kill -0 "$(cat "$ROOT/run/$1.pid")" 2>/dev/null; }

if alive slurmctld; then
  ids=$(squeue -h -o %A 2>/dev/null | sort -u)
  if [ -n "$ids" ]; then
    # shellcheck disable=SC2086
    scancel $ids 2>/dev/null
    for _ in $(seq 50); do [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.2; done
  fi
fi
for name in slurmd slurmctld slurmdbd mysqld munged; do
  pf="$ROOT/run/$name.pid"
  [ -s "$pf" ] || continue
  p=$(cat "$pf")
  if kill "$p" 2>/dev/null; then
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$p" 2>/dev/null && kill -9 "$p"
    echo "stopped $name ($p)"
  fi
  rm -f "$pf"
done
