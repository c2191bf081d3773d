"""Schemathesis hooks for tests/contract/test_schemathesis.py (loaded through SCHEMATHESIS_HOOKS).

One filter, for what multipart cannot carry: a form field sent as an array becomes one part per
item, so `[]` is the same request as a field left out and `[5]` the same as `5`. Schemathesis
counts such an array as schema-violating data that must be refused, but no server can see it.
Arrays of two or more items are real repeated fields and stay in (Kiln refuses them, 422)."""

from __future__ import annotations

import schemathesis


def invisible_on_the_wire(case) -> bool:
    return (case.media_type == "multipart/form-data" and isinstance(case.body, dict)
            and any(isinstance(value, list) and len(value) <= 1 for value in case.body.values()))


@schemathesis.hook
def filter_case(context, case) -> bool:
    return not invisible_on_the_wire(case)
