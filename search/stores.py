"""Opening the search's databases (MLflow's store, Optuna's study) when several processes may
open the same new one at once.

A new SQLite MLflow store is created and migrated (alembic) by whichever process opens it first;
two processes migrating one at once corrupt it for good. ``first_use`` serialises that with an
exclusive lock on a file beside the database. A database server already serialises its clients.
A new store is a copy of an empty one, migrated once per MLflow schema (``new_mlflow_store``).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
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


def new_mlflow_store(url: str) -> None:
    """Give a new SQLite MLflow store (``url``'s file not there yet) its tables by copying an empty
    store of this MLflow schema (``empty_mlflow_store``): MLflow would migrate the new file through
    its whole alembic history, 1-2 s of CPU in every search on a new storage folder. MLflow adds
    the Default experiment, with this store's own artifact location, as it opens the copy. The
    caller holds ``first_use(url)``. A server, an existing file, or a cache that cannot be written
    (MLflow then migrates the file itself) is left as it is."""
    database = sqlite_file(url)
    if database is None or database.exists():
        return
    try:
        template = empty_mlflow_store()
        database.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template, database)
    except OSError:
        return


def empty_mlflow_store() -> Path:
    """An SQLite MLflow store with every table at this MLflow's schema revision and no experiment,
    kept in the user's cache (``$XDG_CACHE_HOME`` or ``~/.cache``, under ``fusion-search/``) by
    revision; migrated here the first time, into a file of its own then moved in place, so that
    processes doing it at once each leave a whole one."""
    from mlflow.store.db.utils import _get_latest_schema_revision, _initialize_tables, create_sqlalchemy_engine

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fusion-search"
    template = cache / f"mlflow-store-{_get_latest_schema_revision()}.db"
    if template.exists():
        return template
    cache.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=cache, prefix=".mlflow-store-", suffix=".db")
    os.close(handle)
    try:
        engine = create_sqlalchemy_engine(SQLITE + name)
        try:
            _initialize_tables(engine)
        finally:
            engine.dispose()
        os.replace(name, template)
    finally:
        Path(name).unlink(missing_ok=True)
    return template
