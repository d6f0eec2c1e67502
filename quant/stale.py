"""Temporary folders that outlive a killed process: claimed with the writer's process id, and
removed by the next writer once that process is gone.

A SIGKILL (or a power cut) runs no cleanup, so a folder being filled stays behind: a
half-written checkpoint, an offload folder of many GB. Each such folder holds
:data:`OWNER_FILE` with its writer's pid; :func:`remove_stale` deletes the folders matching a
pattern whose writer no longer runs. Folders without the file (not ours, or being created
right now) are left alone.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

OWNER_FILE = ".owner-pid"


def claim(folder: Path) -> None:
    """Record this process as the writer of ``folder`` (a fresh temporary folder)."""
    (folder / OWNER_FILE).write_text(str(os.getpid()))


def remove_stale(parent: Path, pattern: str) -> list[Path]:
    """Remove the folders of ``parent`` matching the glob ``pattern`` whose :data:`OWNER_FILE`
    names a process that is gone; returns those removed."""
    removed = []
    for folder in parent.glob(pattern):
        try:
            pid = int((folder / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # not ours, or being created right now
        if pid != os.getpid() and not alive(pid):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists (one of another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:  # not a pid at all
        return False
    return True
