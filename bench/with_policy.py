"""Run a command under a Linux scheduling policy, as `kiln api` and `kiln worker` run themselves.

    python -m bench.with_policy batch|normal COMMAND [ARG ...]

The benchmarks start their baselines through it, so that a baseline can be measured under
Kiln's policy too (`KILN_TUNING__CPU_POLICY`). The policy is set, then the command replaces this
process and inherits it, with every process and thread it starts.
"""

from __future__ import annotations

import os
import sys

from app.cpus import apply_cpu_policy


def command(policy: str, argv: list[str]) -> list[str]:
    """`argv` run under `policy`."""
    return [sys.executable, "-m", "bench.with_policy", policy, *argv]


def main() -> None:
    policy, *argv = sys.argv[1:]
    apply_cpu_policy(policy)
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main()
