"""What each long-running process imports at start (issue 20: peak RSS summed over Kiln's
processes). The API serves uploads and job calls without pyarrow, onnx or ONNX Runtime and
loads pyarrow only once it converts results to another format (a stored results file is copied
as bytes: tests/integration/test_files.py). (The worker parent does import the scoring code: its
prefork children share those pages, and importing it in each child instead was measured to
change the summed peak RSS by under 20 MiB.)"""

import os
import subprocess
import sys

HEAVY = ("numpy", "pyarrow", "onnx", "onnxruntime", "tokenizers", "torch")
ENV = {"KILN_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
       "KILN_REDIS_URL": "redis://127.0.0.1:1/0", "KILN_METRICS_ENABLED": "false"}


def heavy_modules_after(code: str) -> list[str]:
    probe = f"{code}\nimport sys\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")} | ENV
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_an_api_process_starts_without_pyarrow_onnx_or_numpy():
    assert heavy_modules_after("import workers.cli\nfrom app.api import create_app\n"
                               "create_app()") == []
