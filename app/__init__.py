"""Kiln control plane: API, domain, services, ORM, settings and storage."""
