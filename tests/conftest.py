"""Shared test configuration."""
import pytest


@pytest.fixture(autouse=True)
def _run_in_a_scratch_directory(tmp_path, monkeypatch):
    # Subprocesses (python -m simpletcp, python -c ...) put their working directory on
    # sys.path. From the repository root that would import the source tree (with the
    # loop pip left there, or none) instead of the installed package the tests check.
    monkeypatch.chdir(tmp_path)
