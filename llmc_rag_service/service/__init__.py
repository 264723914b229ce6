"""Lifecycles: the one pipeline wiring (serve, enrich, tests, bench), the daemon, the one-shot run, sd_notify, units, status views."""
