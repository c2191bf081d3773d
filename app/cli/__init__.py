"""The `kiln` command line: control-plane and client commands, one module per command group.

Worker-side commands (`kiln worker`, `kiln up`, `kiln models add-demo`) are added by
`workers.cli`, which is the console script's entry point, so that `app` never imports `workers`.
Each submodule keeps its own name (`app.cli.models` is the module; its group is
`app.cli.models.models`).
"""

from app.cli import api, audit, db, jobs, keys, models, tenants, usage, webhooks
from app.cli.api import multiprocess_metrics
from app.cli.base import cli, err, sessions, settings_from

__all__ = ["cli", "err", "multiprocess_metrics", "sessions", "settings_from"]

cli.add_command(db.db)
cli.add_command(keys.keys)
cli.add_command(api.api)
cli.add_command(jobs.submit)
cli.add_command(jobs.status)
cli.add_command(jobs.wait)
cli.add_command(jobs.cancel)
cli.add_command(jobs.results)
cli.add_command(jobs.errors)
cli.add_command(jobs.upload)
cli.add_command(models.models)
cli.add_command(webhooks.webhooks)
cli.add_command(tenants.tenants)
cli.add_command(usage.usage)
cli.add_command(audit.audit)
