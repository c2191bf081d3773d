"""Unit tests see no ambient KILN_* settings, so exporting one (as a shell that runs the
integration tests does) cannot change what Settings() builds here."""

import os

import pytest


@pytest.fixture(autouse=True)
def _no_ambient_kiln_settings(monkeypatch):
    for name in [n for n in os.environ if n.startswith("KILN_") and not n.startswith("KILN_TEST_")]:
        monkeypatch.delenv(name)
