"""Where a search's tracking store is and whether it can be used: URIs and the MLflow client.

``resolve_tracking_uri`` turns what a user typed (nothing, a path, a URI) into the store's URI;
``check_tracking_uri`` fails fast, with one line (``TrackingUnavailable``), where MLflow's own client
would retry for minutes. MLflow itself is imported only when a client is made.
"""

from __future__ import annotations

import contextlib
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path


class TrackingUnavailable(ConnectionError, ValueError):
    """The tracking store cannot be reached; a ValueError too, so the CLI prints it as one line."""


def default_tracking_uri() -> str:
    """A SQLite database in the working folder: nothing to install or start."""
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def resolve_tracking_uri(tracking_uri: str | None) -> str:
    """``tracking_uri`` with ``None``/empty replaced by the default, a bare path made a SQLite URI and a
    relative SQLite path made absolute."""
    if tracking_uri is None or not str(tracking_uri).strip():
        return default_tracking_uri()
    uri = str(tracking_uri).strip()
    if "://" not in uri and not uri.startswith(("databricks", "sqlite:")):
        # a bare path: a .db file is a SQLite store, anything else a file store directory
        path = Path(uri).expanduser().resolve()
        return f"sqlite:///{path}" if path.suffix == ".db" else path.as_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # a relative SQLite path (sqlite:///mlflow.db) is relative to this process's folder; Ray's
        # workers run elsewhere, so it is made absolute here, once, for every process of the search
        return f"sqlite:///{Path(uri[len('sqlite:///'):]).expanduser().resolve()}"
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else uri


def sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):]).expanduser()


def check_tracking_uri(tracking_uri: str | None, *, timeout: float = 5.0) -> str:
    """Fail fast, with one line, if the tracking store cannot be used; returns the resolved URI.

    For a server this is a short-timeout GET of ``/health`` (MLflow's own client retries for
    minutes); for SQLite it checks that the database's folder exists.
    """
    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=timeout) as response:
                if response.status != 200:
                    raise TrackingUnavailable(f"tracking server {uri} is unreachable: HTTP {response.status}")
        except urllib.error.HTTPError as exc:
            raise TrackingUnavailable(f"tracking server {uri} is unreachable: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise TrackingUnavailable(f"tracking server {uri} is unreachable: {reason}") from None
        return uri
    db = sqlite_path(uri)
    if db is not None and not db.parent.is_dir():
        raise TrackingUnavailable(f"tracking store {uri} is unusable: folder {db.parent} does not exist")
    return uri


@contextlib.contextmanager
def quick_http() -> Iterator[None]:
    """Keep MLflow's HTTP retries short while we only probe the server."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "10"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def mlflow_client(uri: str):
    from mlflow.tracking import MlflowClient  # imported late: `squeezelstm train` never pays for it

    # MLflow prints "View run ... at: <url>" on stdout when a run on a server ends; stdout is the
    # command's result (``search --json``), so those lines must not land there.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    return MlflowClient(tracking_uri=uri)
