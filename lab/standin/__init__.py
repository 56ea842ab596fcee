"""The lab's AoE initiator stand-in (docs/lab.md). Stdlib only at import: the stand-in's own
processes (aoe_standin.py, aoe_fuse.py) run with no Django settings."""
from lab.standin.aoe_standin import DATA_PATHS, FILE, WIRE, data_path

__all__ = ["DATA_PATHS", "FILE", "WIRE", "data_path"]
