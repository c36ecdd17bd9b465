"""Crucible: no-code load testing for databases, orchestrated by Dagster."""

__version__ = "0.1.0"
