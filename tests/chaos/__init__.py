"""Chaos: Kiln on its own Postgres and Redis, with processes killed and servers restarted."""
