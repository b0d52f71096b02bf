"""The embedded Ray instance's workers import a trial's code as they start, and the first trials'
actors start on them while the tasks before the trials (the cache pass's) run in workers of their
own: a real ``ray.init`` and a real Tune search in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow

PROBE = textwrap.dedent(
    """
    import json, os, sys, time
    import ray
    from ray import tune
    from cluster.connect import start
    from trainables import PRELOAD
    from search.run.features import BEFORE_TRIALS_ENV, warm_workers

    def started(pid):
        ticks = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[19])
        boot = next(float(l.split()[1]) for l in open("/proc/stat") if l.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")

    def pid():
        return os.getpid()

    def trial(config):
        tune.report({"pid": os.getpid(), "started": started(os.getpid()), "dynamo": "torch._dynamo" in sys.modules,
                     "trial_code": "trainables.trainable" in sys.modules})

    def idle_workers():
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
        return sorted(p for p in pids if open(f"/proc/{p}/cmdline", "rb").read().startswith(b"ray::IDLE"))

    start(1, 0, None, False, PRELOAD)
    from cluster.connect import wait_for_warm_workers
    from trainables import WARM_MARKS
    wait_for_warm_workers(1, timeout_s=120)
    marked = sorted(int(p) for p in os.listdir(os.environ[WARM_MARKS]))
    prestarted = idle_workers()
    warm_workers()
    task_pids = set(ray.get([ray.remote(pid).options(runtime_env=BEFORE_TRIALS_ENV).remote() for _ in range(4)]))
    time.sleep(1.0)
    tuner_start = time.time()
    results = tune.Tuner(tune.with_resources(trial, {"cpu": 1}), tune_config=tune.TuneConfig(num_samples=1),
                         run_config=tune.RunConfig(storage_path=sys.argv[1], verbose=0)).fit()
    print(json.dumps({"marked": marked, "prestarted": prestarted, "tuner_start": tuner_start, "task_pids": sorted(task_pids), "trials": [r.metrics for r in results]}))
    """
)


def test_first_trials_start_on_workers_that_imported_the_trial_code_before_the_tuner(tmp_path):
    """The driver waits until a worker says it has imported a trial's code (``wait_for_warm_workers``),
    and the trial's actor starts on one of those workers."""
    done = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(found["trials"]) == 1
    assert found["prestarted"], "Ray starts idle workers (one per CPU) with the instance"
    assert found["marked"] and set(found["marked"]) <= set(found["prestarted"]), "the wait ended on a worker's mark that it imported a trial's code"
    for trial in found["trials"]:
        assert trial["pid"] not in found["task_pids"], "a trial ran in a worker of the tasks before the trials"
        assert trial["pid"] in found["prestarted"], "the trial's actor did not start on the worker Ray started with the instance"
        assert trial["started"] < found["tuner_start"]
        assert trial["dynamo"] and trial["trial_code"], "the worker had not imported the trial's code as it started"
