"""The store's declared status changes are the state machine in `app.domain.states`, both ways."""

import importlib
import pkgutil

import pytest

import app.store
from app.domain.states import TERMINAL, TRANSITIONS, JobStatus
from app.store import transitions
from app.store.lifecycle import Outcome

for module in pkgutil.iter_modules(app.store.__path__):
    importlib.import_module(f"app.store.{module.name}")


def test_every_declared_change_is_allowed_by_the_state_machine():
    assert transitions.DECLARED, "no store function declares its transitions"
    assert transitions.undeclared() == {}


def test_every_allowed_change_is_made_by_some_store_function():
    declared = set().union(*transitions.DECLARED.values())
    allowed = {(a, b) for a, targets in TRANSITIONS.items() for b in targets}
    assert allowed - declared == set()


def test_terminal_changes_are_declared_only_by_functions_that_go_through_finish():
    import inspect

    for name, pairs in transitions.DECLARED.items():
        if any(b in TERMINAL for _, b in pairs):
            module, _, function = name.rpartition(".")
            source = inspect.getsource(getattr(importlib.import_module(module), function))
            assert "finish(" in source, f"{name} ends jobs without lifecycle.finish"


def test_an_outcome_outside_the_state_machine_is_refused():
    with pytest.raises(ValueError):
        Outcome(id=None, status=JobStatus.SUCCEEDED, from_statuses=(JobStatus.VALIDATING,))
    with pytest.raises(ValueError):
        Outcome(id=None, status=JobStatus.RUNNING, from_statuses=(JobStatus.QUEUED,))
    # a job whose cancel was requested ends cancelled, so succeeding from there is allowed
    Outcome(id=None, status=JobStatus.SUCCEEDED, from_statuses=(JobStatus.CANCELLING,))
