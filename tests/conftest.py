"""Shared fixtures: the embedded digits data, loaded once per session into a temp cache."""
from __future__ import annotations

import pytest

from backdoor.data import load_dataset


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: longer than the CI budget; excluded from `make test`; run with `pytest -m slow`")


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory):
    """The digits dataset (cached in a session temp dir, never in the user's data/)."""
    return load_dataset("digits", data_dir=tmp_path_factory.mktemp("data"))
