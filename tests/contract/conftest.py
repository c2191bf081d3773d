"""A Kiln of its own for the contract tests: `kiln api` + `kiln worker` on an isolated stack,
with the `digits` model and a valid key, so that what the fuzzers create stays out of the other
tests' way."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests import support
from tests.conftest import build_stack


@dataclass
class Contract:
    url: str
    key: str


@pytest.fixture(scope="module")
def contract(services, tmp_path_factory):
    stack, name = build_stack(services, tmp_path_factory.mktemp("contract"))
    stack.add_digits()
    api, worker = support.start_api_and_worker(stack.env, stack.logdir)
    try:
        yield Contract(api.url, stack.create_key())
    finally:
        api.stop()
        worker.stop()
        support.drop_database(services.admin_url, name)
