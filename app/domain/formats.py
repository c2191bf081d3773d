"""File formats by name: which format and compression an upload is, and the media type a
result is served as. Plain Python, so that the API can take uploads without importing pyarrow
(app/formats.py reads and plans the files, in the workers)."""

from __future__ import annotations

from app.errors import InvalidInput

FORMATS = ("csv", "jsonl", "parquet")
EXTENSIONS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet",
              ".pq": "parquet"}
MEDIA_TYPES = {"csv": "text/csv", "jsonl": "application/x-ndjson",
               "parquet": "application/vnd.apache.parquet"}


def detect_format(filename: str, explicit: str | None = None) -> tuple[str, str | None]:
    """(format, compression) from an explicit format or the file name, e.g. `x.csv.gz`."""
    name = filename.lower()
    compression = "gzip" if name.endswith(".gz") else None
    if compression:
        name = name[:-3]
    if explicit:
        fmt = explicit.lower().removesuffix(".gz")
        if explicit.lower().endswith(".gz"):
            compression = "gzip"
    else:
        fmt = next((f for ext, f in EXTENSIONS.items() if name.endswith(ext)), "")
    if fmt not in FORMATS:
        raise InvalidInput(f"cannot tell the format of {filename!r}: use a .csv, .jsonl or "
                           f".parquet name (optionally .gz) or send format=csv|jsonl|parquet")
    if fmt == "parquet" and compression:
        raise InvalidInput("Parquet files are compressed inside; upload them without .gz")
    return fmt, compression
