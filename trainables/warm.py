"""Imported by every worker process of the embedded Ray instance as it starts (``trainables.PRELOAD``):
what its work will import, ahead of the work. A worker of the tasks run before the trials (its
environment says ``WORKER_ROLE=before-trials``) imports the cache pass's code; any other, which
the first trials' actors start on, a trial's code and the part of torch that the optimizer's
first use imports (1.5 s here)."""

import importlib
import os

from trainables import BEFORE_TRIALS, WORKER_ROLE

for _module in ("trainables.feature_cache",) if os.environ.get(WORKER_ROLE) == BEFORE_TRIALS else ("trainables.trainable", "torch._dynamo"):
    importlib.import_module(_module)
