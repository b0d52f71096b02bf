"""Opening the search's databases (MLflow's store, Optuna's study) when several processes may
open the same new one at once.

A new SQLite MLflow store is created and migrated (alembic) by whichever process opens it first;
two processes migrating one at once corrupt it for good. ``first_use`` serialises that with an
exclusive lock on a file beside the database. A database server already serialises its clients.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SQLITE = "sqlite:///"


def sqlite_file(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL (``sqlite:////abs/x.db`` is ``/abs/x.db``); None for a server."""
    return Path(url[len(SQLITE) :].split("?", 1)[0]) if url.startswith(SQLITE) else None


@contextmanager
def first_use(url: str) -> Iterator[None]:
    """Hold ``url``'s database for this process alone while it is opened (created or migrated) and
    what must not interleave is done; nothing for a server."""
    database = sqlite_file(url)
    if database is None:
        yield
        return
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(database.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
