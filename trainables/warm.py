"""Imported by every worker process of the embedded Ray instance as it starts (``trainables.PRELOAD``):
what its work will import, ahead of the work. A worker of the tasks run before the trials (its
environment says ``WORKER_ROLE=before-trials``) imports the cache pass's code; any other, which
the first trials' actors start on, a trial's code and the part of torch that the optimizer's
first use imports (1.5 s here), then says so in the folder ``WARM_MARKS`` names (the driver starts
the trials once their workers are warm: ``cluster.connect.wait_for_warm_workers``)."""

import contextlib
import importlib
import os
from pathlib import Path

from trainables import BEFORE_TRIALS, WARM_MARKS, WORKER_ROLE

if os.environ.get(WORKER_ROLE) == BEFORE_TRIALS:
    importlib.import_module("trainables.feature_cache")
else:
    for _module in ("trainables.trainable", "torch._dynamo"):
        importlib.import_module(_module)
    if os.environ.get(WARM_MARKS):
        with contextlib.suppress(OSError):  # the folder is gone once the driver that made it ended
            Path(os.environ[WARM_MARKS], str(os.getpid())).touch()
