"""End-to-end tests: the README's commands and Dagster's own processes."""
