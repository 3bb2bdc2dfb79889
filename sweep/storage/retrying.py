"""A server storage's calls, retried after a dropped connection (a server restart, a failover, a connection killer)."""

import abc
import threading

from optuna.storages import BaseStorage, RDBStorage

from sweep.storage.faults import StorageFault, describe, is_connection_loss, root_cause

# Waits before the retries of a storage call that lost its connection: about 45 s in all, which covers a server
# restart or a failover; a storage down for longer is a fault the run cannot survive.
RETRY_DELAYS_S = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0)


def redis_retry():
    """redis-py's retries of a command whose connection dropped: after RETRY_DELAYS_S, as for a database."""
    from redis.backoff import AbstractBackoff
    from redis.retry import Retry

    class Delays(AbstractBackoff):
        def compute(self, failures: int) -> float:
            return RETRY_DELAYS_S[min(failures, len(RETRY_DELAYS_S)) - 1]

    return Retry(Delays(), len(RETRY_DELAYS_S))


class RetryingStorage(BaseStorage):
    """A server database (PostgreSQL, MySQL) whose calls survive a dropped connection: a call that fails because its
    connection was lost is retried on a new one after RETRY_DELAYS_S, and fails with a FaultError after the last.

    A storage error inside a trial is a fault of the storage, not of the trial. Calls that create a row are retried
    too: a connection lost before the commit rolled the row back, so the retry makes it once. Only an acknowledgement
    lost after the commit (a far narrower window) makes it twice: a study's retry then meets its own row, which
    create_study(load_if_exists=True) loads, and a trial's leaves an extra RUNNING trial that no worker stamps, reaped
    after --grace like a dead worker's. Not retrying them instead ended the worker (an `ask` in flight when the
    connection dropped). It wraps the RDBStorage instead of subclassing it, since Optuna would wrap a subclass in its
    cache, which calls private methods of the RDBStorage that no public override can reach.
    """

    def __init__(self, inner: RDBStorage, *, label: str):
        self.inner = inner
        self.label = label


def _retrying(name: str):
    def call(self, *args, **kwargs):
        method = getattr(self.inner, name)
        for delay in (*RETRY_DELAYS_S, None):
            try:
                return method(*args, **kwargs)
            except Exception as error:
                if not is_connection_loss(error):
                    raise
                if delay is None:
                    raise StorageFault(
                        f"storage {self.label} lost its connection and did not come back within "
                        f"{sum(RETRY_DELAYS_S):.0f}s ({describe(root_cause(error))}); a trial left RUNNING is retried "
                        "from its checkpoint when the command runs again"
                    ) from error
                threading.Event().wait(delay)  # back off; nothing sets it

    call.__name__ = name
    return call


for _name in sorted(BaseStorage.__abstractmethods__) + ["remove_session"]:
    setattr(RetryingStorage, _name, _retrying(_name))
abc.update_abstractmethods(RetryingStorage)

