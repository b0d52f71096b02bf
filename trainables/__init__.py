"""What runs inside one trial (and the cache pass's tasks)."""

PRELOAD = ("trainables.warm",)
"""What the embedded Ray instance's worker processes import as they start (``cluster.connect.start(preload=)``)."""

WORKER_ROLE, BEFORE_TRIALS = "FUSION_SEARCH_WORKERS", "before-trials"
"""The environment variable, and its value, of the worker processes that run the tasks before the trials."""

WARM_MARKS = "FUSION_SEARCH_WARM_MARKS"
"""The environment variable naming the folder where each trial worker of the embedded Ray instance
leaves a file, named by its process id, once it has imported a trial's code (``trainables.warm``)."""
