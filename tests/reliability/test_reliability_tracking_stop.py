"""A tracking server that stays down past MLflow's retries stops the search with one line, not a traceback."""

import pytest
from mlflow.exceptions import MlflowException

from squeezelstm.search import backends, cli


class _Wrapped(RuntimeError):
    """Stands in for the error type Ray wraps driver-side exceptions in."""


def _raise_tracking(*args, **kwargs):
    try:
        raise MlflowException("API request to http://127.0.0.1:5999/api/2.0/mlflow/runs/update failed")
    except MlflowException as exc:
        raise _Wrapped("search driver failed") from exc


def _raise_other(*args, **kwargs):
    raise RuntimeError("a bug that is not about tracking")


def test_tracking_outage_mid_search_is_one_line_with_resume_hint(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(backends, "run_search", _raise_tracking)
    code = cli.main(["search", "--space", "default", "--trials", "2", "--experiment", "outage",
                     "--storage", str(tmp_path), "--no-tracking"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1, err
    assert "tracking server failed" in err[0] and "--resume" in err[0] and "MlflowException" in err[0]
    assert "Traceback" not in err[0]


def test_other_errors_are_not_disguised_as_tracking_outages(monkeypatch, tmp_path):
    monkeypatch.setattr(backends, "run_search", _raise_other)
    with pytest.raises(RuntimeError, match="not about tracking"):
        cli.main(["search", "--space", "default", "--trials", "2", "--experiment", "bug",
                  "--storage", str(tmp_path), "--no-tracking"])
