"""The MLflow store: its URI (a sqlite file by default, made absolute: one store, one name), a lock shared by
every process that creates it, and a client on it."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow import MlflowClient

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # MLflow 3 refuses the plain-folder store (`file:./mlruns`)


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///…`` tracking URI (relative to the working directory), else None."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    path = uri[len(prefix) :].split("?")[0]
    return None if path in ("", ":memory:") else Path(path)


def absolute_uri(uri: str) -> str:
    """A sqlite URI with its database's absolute, normalised path (``sqlite:///mlflow.db`` in /work →
    ``sqlite:////work/mlflow.db``): one store, one name. Other URIs unchanged."""
    path = sqlite_path(uri)
    if path is None:
        return uri
    query = uri.partition("?")[1] + uri.partition("?")[2]
    return f"sqlite:///{path.expanduser().resolve()}{query}"


def missing_store(uri: str) -> str | None:
    """The absolute URI of a sqlite store whose file does not exist (opening it would create an empty
    one), else None: commands that only read runs refuse it instead of leaving an empty database."""
    path = sqlite_path(uri)
    return absolute_uri(uri) if path is not None and not path.is_file() else None


def holds_run(uri: str, run_id: str) -> bool:
    """Does the store at `uri` hold the run `run_id`? (A missing sqlite file is not created.)"""
    from mlflow.exceptions import MlflowException

    if missing_store(uri):
        return False
    try:
        open_client(uri).get_run(run_id)
    except MlflowException:
        return False
    return True


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive lock shared by every process using the sqlite store at `uri` (``flock`` on
    ``<database>.lock`` beside it; a no-op for other stores).

    MLflow creates a new sqlite store by running its schema migrations, with no lock: two `sgqn fit`
    started at the same moment in a new folder both migrated ``mlflow.db`` and one crashed (alembic's
    "Online migration expected to match one row"). They, and the creation of an experiment and of a
    run's unique name, happen under this lock.
    """
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    path = path.expanduser().resolve()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)  # as MLflow does for the database
        lock = path.with_name(path.name + ".lock").open("a")
    except OSError:  # a read-only folder: nothing can be created there, and there is nothing to guard
        yield
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def open_client(uri: str | None = None) -> MlflowClient:
    """An `MlflowClient` on `uri` (default `default_tracking_uri`; a sqlite path made absolute); a new
    sqlite store is created (its schema migrated) by one process at a time (`store_lock`)."""
    from mlflow import MlflowClient

    uri = absolute_uri(uri or default_tracking_uri())  # (MLflow caches a store by its URI)
    with store_lock(uri):
        return MlflowClient(tracking_uri=uri)
