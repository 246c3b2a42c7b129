"""Who owns a container: the owner label an attached ``aibuild run`` writes, and whether
the process it names is gone.

SIGKILL leaves no chance to clean up. What Docker offers instead: AutoRemove, so the
engine deletes the container as soon as it exits; and a label naming the attached
``aibuild run`` (host, pid, process start time, uid), so that the next ``aibuild run``
on this host stops and removes containers whose aibuild is gone
(``lifecycle.reap_orphans``). Detached runs (-d) carry no owner: they are meant to
outlive aibuild.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22): with
    the pid, it names one process even after the pid is reused. Empty when unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rpartition(")")[2].split()[19]


def owner_label(pid: int | None = None) -> str:
    """``host:pid:start:uid`` of this process (or ``pid``): the attached ``aibuild run`` that
    owns a container or a network, and the user it runs as."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_start_time(pid)}:{os.getuid()}"


def is_orphan(owner: str) -> bool:
    """Whether the ``aibuild run`` an owner label names is gone. Judged only on its host, for
    labels of this user's runs, with a known start time: anything else (another host, another
    user, a label aibuild did not write) is not ours to remove."""
    parts = owner.split(":")
    if len(parts) != 4:
        return False
    host, pid_text, start, uid = parts
    if host != socket.gethostname() or not pid_text.isdigit() or not start.isdigit():
        return False
    if uid != str(os.getuid()):
        return False
    return not Path(f"/proc/{pid_text}").exists() or _start_time(int(pid_text)) != start
