"""What runs inside a SLURM job (awm/cluster/jobs.py), where SLURM's own processes are not needed."""

import os
import signal
import stat

from awm.cluster.jobs import TrainTask


def test_requeue_survives_the_preemption_signals_that_keep_coming(tmp_path, monkeypatch):
    """SLURM signals every process of a step, `scontrol requeue` included: a preemption's USR2 landing
    while scontrol ran killed it before its request was sent (exit -12, no stderr), and the job ended
    FAILED instead of requeued (seen in the SLURM preemption test under load). The stand-in scontrol
    signals itself the way that late USR2 / SIGTERM would, then records that it finished."""
    done = tmp_path / "done"
    scontrol = tmp_path / "scontrol"
    scontrol.write_text(f'#!/bin/sh\nkill -USR2 $$\nkill -TERM $$\necho "$@" > {done}\n')
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    before = signal.getsignal(signal.SIGUSR2), signal.getsignal(signal.SIGTERM)
    TrainTask._requeue("74", 0)
    assert done.exists(), "scontrol was killed by a signal meant for the training step"
    assert done.read_text().split() == ["requeue", "74"]
    assert (signal.getsignal(signal.SIGUSR2), signal.getsignal(signal.SIGTERM)) == before  # handlers restored


def test_a_task_requeued_after_its_launch_failed_is_waited_for_not_reported_failed(tmp_path, monkeypatch, capsys):
    """A task sent to a node that just died is requeued by SLURM and runs elsewhere; in that moment
    submitit saw a finished state with no result ('No output/error stream produced') and `--wait`
    exited 1 although the task then succeeded (seen in the node-death SLURM test). The stand-in
    sacct gives submitit that view, keeps the task pending for AWM's own check for a few calls, then
    'runs' it (its result appears) and reports it completed."""
    import submitit
    from submitit.core import utils

    from awm.cluster.jobstate import wait_jobs

    job = submitit.SlurmJob(folder=tmp_path / "jobs", job_id="9917_1")
    job._results_timeout_s = 0
    job.paths.folder.mkdir(parents=True)
    ready = tmp_path / "ready.pkl"
    utils.cloudpickle_dump(("success", "shard part 1/4"), ready)
    sacct = tmp_path / "sacct"
    sacct.write_text(f"""#!/bin/sh
n=$(cat {tmp_path}/calls 2>/dev/null || echo 0); n=$((n+1)); echo $n > {tmp_path}/calls
case "$*" in
  *parsable2*) echo "JobID|State|NodeList"; echo "9917_1|NODE_FAIL|n2";;
  *) if [ $n -lt 4 ]; then echo "9917_1|PENDING"; else mv {ready} {job.paths.result_pickle} 2>/dev/null; \
     echo "9917_1|COMPLETED"; fi;;
esac
""")
    sacct.chmod(sacct.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert wait_jobs([job]) == 0
    assert "job 9917_1: done" in capsys.readouterr().out
