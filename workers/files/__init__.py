"""File jobs: validate and plan into chunks, score chunks in parallel, finalize.

Each phase claims its unit (the job, or one chunk) with a conditional UPDATE that bumps
`attempt` and sets a lease, holds the lease with a heartbeat for as long as it works, and fences
every later write with that attempt, exactly like inline jobs. A chunk's rows become JSONL part
files named by attempt, so a re-run writes new parts and only the committed attempt's parts are
ever read: one output row per input row however often a chunk runs.
"""

from workers.files.chunk import run_chunk
from workers.files.routing import advance

__all__ = ["advance", "run_chunk"]
