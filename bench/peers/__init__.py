"""Peer job-queue adapters for the Conveyor benchmark harness.

Each module in this package adapts one library to the harness contract documented in
bench/README.md ("Adding a library"). The modules import their library at top level, so they
only import inside that library's own virtualenv (bench/.peers/venvs/<name>); the harness reads
their metadata constants with `ast` and never imports them.
"""
