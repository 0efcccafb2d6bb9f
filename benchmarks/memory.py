"""Peak memory of a process, as the kernel counts it for that process alone.

`ru_maxrss` is no good for a child: Linux carries the parent's high-water mark across fork and
exec. VmHWM in /proc/PID/status belongs to the process's own address space.
"""

from __future__ import annotations


def peak_mb(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc status")
