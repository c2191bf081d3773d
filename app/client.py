"""A small HTTP client for the Kiln API, used by the CLI, the demo and the benchmarks."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from app.domain.states import is_terminal


class ApiError(Exception):
    """Raised when the API answers with a problem+json error."""

    def __init__(self, response: httpx.Response):
        try:
            body = response.json()
        except ValueError:
            body = {"detail": response.text}
        self.status = response.status_code
        self.problem = body
        super().__init__(f"{response.status_code} {body.get('title', '')}: {body.get('detail', '')}")


# A pooled keep-alive connection the server closed while idle fails like this; a request that is
# safe to repeat (a read, or a submit carrying an Idempotency-Key) is simply sent again.
MAX_WAIT = 25.0  # seconds a `?wait` request asks for (the server allows 30)
STALE_CONNECTION = (httpx.RemoteProtocolError, httpx.ConnectError, httpx.ReadError,
                    httpx.WriteError)


class KilnClient:
    def __init__(self, api_url: str, api_key: str | None, timeout_seconds: float = 30.0):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=api_url.rstrip("/"), headers=headers,
                                 timeout=timeout_seconds)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> KilnClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _retrying(self, method: str, url: str, attempts: int = 3, **kwargs) -> httpx.Response:
        for attempt in range(attempts):
            try:
                return self.http.request(method, url, **kwargs)
            except STALE_CONNECTION:
                if attempt == attempts - 1:
                    raise
                time.sleep(0.05 * 2 ** attempt)
        raise AssertionError("unreachable")

    def _check(self, response: httpx.Response) -> httpx.Response:
        if response.status_code >= 400:
            raise ApiError(response)
        return response

    def submit(self, model: str, inputs: list[Any], *, metadata: dict | None = None,
               priority: int = 0, webhook_url: str | None = None,
               idempotency_key: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model, "inputs": inputs, "priority": priority}
        if metadata:
            body["metadata"] = metadata
        if webhook_url:
            body["webhook_url"] = webhook_url
        # A key of its own makes the submit safe to resend when a connection drops mid-request.
        headers = {"Idempotency-Key": idempotency_key or f"kiln-client-{uuid.uuid4()}"}
        return self._check(self._retrying("POST", "/v1/jobs", json=body, headers=headers)).json()

    def estimate(self, body: dict[str, Any]) -> dict[str, Any]:
        """`POST /v1/jobs/estimate`: what submitting `body` would be; queues nothing."""
        return self._check(self._retrying("POST", "/v1/jobs/estimate", json=body)).json()

    def job(self, job_id: str, *, wait: float = 0) -> dict[str, Any]:
        """The job; with `wait`, once it has ended or after that many seconds (at most 30)."""
        if not wait:
            return self._check(self._retrying("GET", f"/v1/jobs/{job_id}")).json()
        timeout = httpx.Timeout(self.http.timeout.read or 30.0, read=wait + 30.0)
        return self._check(self._retrying("GET", f"/v1/jobs/{job_id}", params={"wait": wait},
                                          timeout=timeout)).json()

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._check(self.http.post(f"/v1/jobs/{job_id}/cancel")).json()

    def usage(self, *, start: str | None = None, end: str | None = None,
              group_by: str | None = None) -> dict[str, Any]:
        """`GET /v1/usage`: the tenant's limits, current use and usage in [start, end)."""
        params = {k: v for k, v in {"start": start, "end": end, "group_by": group_by}.items()
                  if v is not None}
        return self._check(self._retrying("GET", "/v1/usage", params=params)).json()

    def pages(self, path: str, **params: Any) -> Iterator[dict[str, Any]]:
        """Every item of a list, a page at a time: `limit`, then `after` the last id seen."""
        params = {k: v for k, v in params.items() if v is not None}
        while True:
            page = self._check(self._retrying("GET", path, params=params)).json()
            yield from page["data"]
            if not page["has_more"]:
                return
            params["after"] = page["last_id"]

    def models(self) -> list[dict[str, Any]]:
        return list(self.pages("/v1/models", limit=200))

    def jobs(self, *, status: str | None = None, model: str | None = None,
             page_size: int = 100) -> Iterator[dict[str, Any]]:
        """The tenant's jobs, newest first."""
        return self.pages("/v1/jobs", status=status, model=model, limit=page_size)

    def files(self, *, purpose: str | None = None,
              page_size: int = 100) -> Iterator[dict[str, Any]]:
        """The tenant's files, newest first."""
        return self.pages("/v1/files", purpose=purpose, limit=page_size)

    def wait(self, job_id: str, *, timeout_seconds: float = 3600, poll_seconds: float = 0.25,
             on_update: Callable[[dict[str, Any]], None] | None = None,
             update_seconds: float = 1.0) -> dict[str, Any]:
        """Until the job reaches a terminal state, through held requests (`?wait`): each as
        long as the server allows, or, to show progress to `on_update`, `update_seconds`. A
        server that holds no more requests answers at once; then this reads every
        `poll_seconds`."""
        deadline = time.monotonic() + timeout_seconds
        while True:
            left = deadline - time.monotonic()
            hold = max(0.0, min(left, update_seconds if on_update else MAX_WAIT))
            asked = time.monotonic()
            job = self.job(job_id, wait=hold)
            if on_update is not None:
                on_update(job)
            if is_terminal(job["status"]):
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {job['status']} after {timeout_seconds}s")
            if time.monotonic() - asked < min(hold, poll_seconds):  # not held: poll
                time.sleep(poll_seconds)

    def iter_results(self, job_id: str, kind: str = "results",
                     fmt: str | None = None) -> Iterator[bytes]:
        params = {"format": fmt} if fmt else {}
        with self.http.stream("GET", f"/v1/jobs/{job_id}/{kind}", params=params) as response:
            if response.status_code >= 400:
                response.read()
                raise ApiError(response)
            yield from response.iter_bytes()

    def upload(self, path, *, purpose: str = "input", fmt: str | None = None,
               on_bytes: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Upload a file as multipart, reporting bytes sent to `on_bytes`."""
        with open(path, "rb") as handle:
            source = _Counting(handle, on_bytes) if on_bytes else handle
            data = {"purpose": purpose} | ({"format": fmt} if fmt else {})
            response = self.http.post("/v1/files", files={"file": (Path(path).name, source)},
                                      data=data, timeout=None)
        return self._check(response).json()

    def delete_file(self, file_id: str) -> None:
        self._check(self.http.delete(f"/v1/files/{file_id}"))

    def submit_file(self, model: str, file_id: str, **options: Any) -> dict[str, Any]:
        body = {"model": model, "input_file": file_id,
                **{k: v for k, v in options.items() if v is not None}}
        headers = {"Idempotency-Key": f"kiln-client-{uuid.uuid4()}"}
        return self._check(self._retrying("POST", "/v1/jobs", json=body, headers=headers)).json()


class _Counting:
    """A file wrapper that reports how many bytes were read."""

    def __init__(self, handle, on_bytes: Callable[[int], None]):
        self.handle, self.on_bytes = handle, on_bytes

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.on_bytes(len(data))
        return data

    def __getattr__(self, name: str):
        return getattr(self.handle, name)
