"""Messages to workers: the Celery settings and task names both sides share
(`celery_config`), the API's `publisher`, the workers' `drains` flags, and the API's
`coalescer`. Import from the module that holds the concept; this package re-exports nothing."""
