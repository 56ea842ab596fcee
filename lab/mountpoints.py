"""The directories `lab up` creates in the machine's file system for the hosts to mount over, and
the record (LAB_DIR/state.json) that lets `lab down` remove exactly those."""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from lab.system import netns_names, sh
from lab.topology import PRIVATE_DIRS, lab_dir

ETHERD_DIR = "/dev/etherd"
Output = Callable[[str], None]


def make_mountpoints() -> None:
    """Create the directories the hosts mount over (and /run/netns's mount via `ip netns add`),
    recording what did not exist so that `down` removes exactly that."""
    state = _load_state()
    made = state.setdefault("made_dirs", [])
    for target in [*PRIVATE_DIRS, ETHERD_DIR]:
        missing = []
        path = Path(target)
        while not path.exists():
            missing.append(str(path))
            path = path.parent
        for directory in reversed(missing):
            os.mkdir(directory, 0o755)
            made.append(directory)
    if not is_mountpoint("/run/netns") and not state.get("made_run_netns"):
        state["made_run_netns"] = True
        state["made_run_netns_dir"] = not Path("/run/netns").exists()
    _save_state(state)


def remove_mountpoints(out: Output) -> None:
    state = _load_state()
    kept = []
    for directory in reversed(state.get("made_dirs", [])):
        try:
            os.rmdir(directory)
        except FileNotFoundError:
            pass
        except OSError as exc:  # someone put something there: theirs now, not the lab's to delete
            out(f"warning: keeping {directory}, which lab up created: {exc.strerror}")
            kept.insert(0, directory)
    state["made_dirs"] = kept
    if state.get("made_run_netns") and not netns_names():
        if is_mountpoint("/run/netns"):
            sh(["umount", "/run/netns"])
        if state.get("made_run_netns_dir"):
            os.rmdir("/run/netns")
        state["made_run_netns"] = state["made_run_netns_dir"] = False
    _save_state(state)


def is_mountpoint(path: str) -> bool:
    with open("/proc/self/mountinfo") as mountinfo:
        return any(line.split()[4] == path for line in mountinfo)


def load_state(path: Path) -> dict:
    """A state file the lab (or the fleet) keeps about what it made; {} when there is none yet."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}


def save_state(path: Path, state: dict) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.write_text(json.dumps(state, indent=2) + "\n")


def _state_file() -> Path:
    return lab_dir() / "state.json"


def _load_state() -> dict:
    return load_state(_state_file())


def _save_state(state: dict) -> None:
    save_state(_state_file(), state)
