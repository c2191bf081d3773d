"""requirements/constraints.txt pins every package pyproject.toml asks for, so `make`'s installs
resolve nothing and every machine runs what CI passed with."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def pinned() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements" / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"not an exact pin: {line!r}"
            pins[canonicalize_name(name)] = version
    return pins


def asked_for() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        wanted += [Requirement(r) for r in extra if not r.startswith("kiln[")]
    return wanted


def test_every_dependency_is_pinned_to_a_version_it_allows():
    pins = pinned()
    for requirement in asked_for():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is not in requirements/constraints.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{requirement.name}=={pins[name]} does not satisfy {requirement}")


def test_torch_is_the_cpu_build_on_disk():
    assert re.fullmatch(r"2\.13\.0", pinned()["torch"]), "an unpinned torch pulls a CUDA build"
