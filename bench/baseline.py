"""The code a user would write instead: one plain Celery task per record.

Each task runs the same ONNX model (session cached per process) and inserts its result row
into Postgres with its own commit. `http_app` is the same glue behind an HTTP endpoint.
"""

from __future__ import annotations

import os

import numpy as np
import orjson
import psycopg
from celery import Celery
from flask import Flask, jsonify, request

app = Celery("baseline")
app.conf.update(broker_url=os.environ.get("BASELINE_BROKER_URL", "redis://127.0.0.1:6379/0"),
                task_acks_late=True, worker_prefetch_multiplier=1, task_ignore_result=True,
                task_serializer="json", accept_content=["json"],
                task_default_queue=os.environ.get("BASELINE_QUEUE", "baseline"),
                worker_hijack_root_logger=False)

_state: dict = {}


def _session_and_conn():
    if "pid" not in _state or _state["pid"] != os.getpid():
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        with open(os.environ["BASELINE_MODEL"], "rb") as handle:
            session = ort.InferenceSession(handle.read(), options, providers=["CPUExecutionProvider"])
        _state.update(pid=os.getpid(), session=session,
                      conn=psycopg.connect(os.environ["BASELINE_DSN"]))
    return _state["session"], _state["conn"]


@app.task(name="baseline.score")
def score(job: int, record: list[float]) -> None:
    session, conn = _session_and_conn()
    labels, probabilities = session.run(["label", "probabilities"],
                                        {"X": np.array([record], dtype=np.float32)})
    output = {"label": int(labels[0]), "probabilities": [float(p) for p in probabilities[0]]}
    conn.execute("INSERT INTO baseline_results (job, output) VALUES (%s, %s)",
                 (job, orjson.dumps(output).decode()))
    conn.commit()


# The same task behind the HTTP endpoint a user would put in front of it: parse the request,
# enqueue one task per record, answer 202. No auth, no job record, no idempotency: the least
# an HTTP service can do, so Kiln is compared with glue that does less than it does.
http_app = Flask("baseline-http")
COLUMNS = [f"p{i}" for i in range(64)]


@http_app.post("/score")
def submit():
    body = request.get_json()
    task_ids = [score.apply_async(args=(body["job"], [record[c] for c in COLUMNS])).id
                for record in body["inputs"]]
    return jsonify({"tasks": task_ids}), 202
