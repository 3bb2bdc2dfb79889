"""Optuna storages by URL: one description per kind (kinds), opened and checked (opening), their faults said in one
line (faults), a server's dropped connections retried (retrying), journals checked for damage (journal).

The names below load on first use: the CLI reads the kinds before any command imports Optuna.
"""

import importlib

_HOMES = {
    "KINDS": "sweep.storage.kinds",
    "StorageKind": "sweep.storage.kinds",
    "kind_of": "sweep.storage.kinds",
    "mask": "sweep.storage.kinds",
    "open_storage": "sweep.storage.opening",
    "open_study": "sweep.storage.opening",
    "check_reachable": "sweep.storage.opening",
    "persistence_gap": "sweep.storage.opening",
    "StorageFault": "sweep.storage.faults",
    "describe": "sweep.storage.faults",
    "storage_fault": "sweep.storage.faults",
    "repair_journal": "sweep.storage.journal",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'sweep.storage' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
