"""Storage errors as one line each: what failed, with passwords masked, and whether a dropped connection caused it."""

import sqlite3

import optuna

from sweep.storage.kinds import mask
from train_core import FaultError


def causes(error: BaseException) -> list[BaseException]:
    """error, then each exception it was raised from or while handling, innermost last."""
    chain = [error]
    while (inner := chain[-1].__cause__ or chain[-1].__context__) is not None and inner not in chain:
        chain.append(inner)
    return chain


def root_cause(error: BaseException) -> BaseException:
    """The innermost exception error was raised from: the driver's own (`database disk image is malformed`) rather
    than the wrapper's (Optuna's "... e.g. exceeding max length")."""
    return causes(error)[-1]


def describe(error: BaseException) -> str:
    """An exception as one line with passwords masked."""
    text = str(error).strip()
    return mask(text.splitlines()[0]) if text else error.__class__.__name__


def storage_fault(error: BaseException) -> str | None:
    """One line for an error raised by a storage (or the disk) mid-run, None for any other error."""
    from sqlalchemy.exc import SQLAlchemyError

    # A fault anywhere in the chain is the cause: Optuna's trial post-processing, when the storage fails under it, raises
    # an UnboundLocalError of its own while handling the FaultError.
    if (fault := next((e for e in causes(error) if isinstance(e, FaultError)), None)) is not None:
        return str(fault)
    root = root_cause(error)
    if isinstance(error, (optuna.exceptions.StorageInternalError, SQLAlchemyError, sqlite3.Error)) or isinstance(
        root, sqlite3.Error
    ):
        return f"the storage failed: {describe(root)}"
    if isinstance(root, OSError):
        return f"{root.strerror or describe(root)}: {root.filename}" if root.filename else describe(root)
    if root.__class__.__module__.startswith("redis"):
        return f"the storage failed: {describe(root)}"
    return None



def is_connection_loss(error: BaseException) -> bool:
    """Whether error is the storage's connection dropping (a server restart, a failover, an idle-connection killer),
    as opposed to a statement the database refused. The drop may be only the context of the error raised: SQLAlchemy's
    PendingRollbackError, met by the next statement of the transaction the drop cut, wrapped by Optuna."""
    from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError

    # InterfaceError: "connection already closed", a connection the server dropped earlier
    return any(
        isinstance(cause, DisconnectionError) or (isinstance(cause, DBAPIError) and (
            cause.connection_invalidated or isinstance(cause, (OperationalError, InterfaceError))))
        for cause in causes(error)
    )



class StorageFault(FaultError):
    """The storage failed under a running trial: a fault of the storage, not of the trial, which is queued again."""


# Waits before the retries of a storage call that lost its connection: about 45 s in all, which covers a server
