"""What reaching a cluster can refuse, as errors a caller can tell apart (importing nothing heavy)."""


class ResourcesUnavailable(ValueError):
    """A trial asks for more CPUs or GPUs than this machine has (the message names the spec's field)."""
