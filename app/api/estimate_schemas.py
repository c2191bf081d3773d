"""The response model of `POST /v1/jobs/estimate`, kept apart from `app.api.schemas`."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field


class EstimateOut(BaseModel):
    object: Literal["estimate"] = "estimate"
    model: str
    kind: Literal["inline", "file"]
    rows: int = Field(description="Rows the job would score (a file's, counted exactly).")
    queue_ahead_rows: int = Field(description="Rows still to score of the model's unfinished jobs on its queue at its priority or above.")
    rows_per_second: float = Field(description="The rate the times assume.")
    estimated_seconds: float = Field(description="From now until the job would finish.")
    estimated_start_at: datetime
    estimated_finish_at: datetime
    basis: dict[str, Any] = Field(description='Where the rate comes from: `{"source": "recent_usage", "jobs", "rows", "seconds", "window_seconds"}` or `{"source": "default"}` (KILN_ESTIMATE_ROWS_PER_SECOND).')
