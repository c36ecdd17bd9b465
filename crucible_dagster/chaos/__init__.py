"""Chaos on the load's timeline: faults injected on schedule by a backend, always recovered."""
