"""What every benchmark needs of the server: the release binary's default path, starting it
on a free loopback port with a fresh data directory, and reading its memory."""

import os
import subprocess
import sys

DEFAULT_BINARY = os.path.join(
    os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/tributary-target")),
    "release", "tributary")


def start_server(binary, data, *extra_args, log="warn"):
    """Starts `tributary serve`; returns the process and the port it listens on."""
    proc = subprocess.Popen(
        [binary, "serve", "--data", data, "--listen", "127.0.0.1:0", "--log", log,
         *extra_args],
        stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    if not line.startswith("tributary listening on "):
        proc.kill()
        sys.exit(f"unexpected first line from the server: {line!r}")
    return proc, int(line.rsplit(":", 1)[1])


def memory_mib(pid, field):
    """A /proc/<pid>/status memory field in MiB: VmRSS (now) or VmHWM (peak)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid):
    """User + system CPU time the process has used so far, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def tree_bytes(root):
    """Every file under root with its size: compare two calls to see what a statement wrote."""
    sizes = {}
    for parent, _, names in os.walk(root):
        for name in names:
            path = os.path.join(parent, name)
            try:
                sizes[path] = os.path.getsize(path)
            except FileNotFoundError:
                pass
    return sizes


def bytes_written(root, before):
    """Bytes of the files under root that `before` (a tree_bytes result) did not have."""
    return sum(size for path, size in tree_bytes(root).items() if path not in before)
