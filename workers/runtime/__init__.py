"""Model runtimes behind one small interface: load once per process, `run(records) -> outputs`."""
