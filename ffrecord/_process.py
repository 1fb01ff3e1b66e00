"""Small facts about local processes, shared by the modules that clean up after dead ones."""

import os


def pid_alive(pid):
    """Whether a process with this pid exists on this machine (signal 0 probes
    without sending anything; EPERM means it exists but belongs to someone else)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
