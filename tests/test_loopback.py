"""The embedded (private) Ray listens on the loopback address only: GCS, raylet, workers and
agents, read from the kernel's socket tables (/proc/net/tcp, tcp6) for every process of the
instance."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow

LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}  # 127.0.0.1, ::ffff:127.0.0.1, ::1

PROBE = textwrap.dedent(
    """
    import json, os
    import ray
    from cluster.connect import connect

    def tree(root):
        children = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    parent = int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1])
                except OSError:
                    continue
                children.setdefault(parent, []).append(int(entry))
        found, todo = set(), [root]
        while todo:
            pid = todo.pop()
            found.add(pid)
            todo += children.get(pid, [])
        return found

    def sockets(pids):
        owned = {}
        for pid in pids:
            try:
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:["):
                        owned[link[8:-1]] = pid
            except OSError:
                continue
        listening = []
        for table in ("tcp", "tcp6"):
            for line in open(f"/proc/net/{table}").read().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in owned:  # 0A: LISTEN
                    address, port = fields[1].split(":")
                    listening.append([address, int(port, 16), open(f"/proc/{owned[fields[9]]}/cmdline").read().split("\\0")[0]])
        return listening

    before = {tuple(s[:2]) for s in sockets({os.getpid()})}  # whatever this process was handed
    connect()
    ray.get([ray.remote(lambda: os.getpid()).remote() for _ in range(2)])  # workers up too
    print(json.dumps({"node_ip": ray.util.get_node_ip_address(), "listening": [s for s in sockets(tree(os.getpid())) if tuple(s[:2]) not in before]}))
    """
)


def test_embedded_ray_listens_on_loopback_only():
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["node_ip"] == "127.0.0.1"
    assert len(found["listening"]) >= 4, "GCS, raylet, workers and agents were found listening"
    exposed = [s for s in found["listening"] if s[0] not in LOOPBACK]
    assert not exposed, f"listening beyond loopback: {exposed}"
