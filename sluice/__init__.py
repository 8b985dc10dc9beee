"""Sluice's command line: ``python -m sluice <command>`` (``--help`` lists the commands)."""
