"""pg_events-style settings modules and callbacks used by tests/test_cli.py (in a subprocess)."""
