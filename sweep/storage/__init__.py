"""Optuna storages by URL: one description per kind (kinds), opened and checked (opening), their faults said in one
line (faults), a server's dropped connections retried (retrying), journals checked for damage (journal)."""

from sweep.storage.faults import StorageFault, describe, storage_fault
from sweep.storage.journal import repair_journal
from sweep.storage.kinds import KINDS, StorageKind, kind_of, mask
from sweep.storage.opening import check_reachable, open_storage, open_study, persistence_gap

__all__ = [
    "KINDS", "StorageFault", "StorageKind", "check_reachable", "describe", "kind_of", "mask", "open_storage",
    "open_study", "persistence_gap", "repair_journal", "storage_fault",
]
