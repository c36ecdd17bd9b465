"""Generator health: whether a shard, rather than the SUT, may have limited the load.

A shard runs on one event loop in one process, so it saturates at one core. Above
`CPU_BOTTLENECK_PERCENT` of a core, or when its event loop woke more than
`LOOP_LAG_BOTTLENECK_MS` late at least once, its timings include its own queueing and the run
says so instead of blaming the SUT.
"""

from collections.abc import Sequence

from crucible_dagster.engine.model import ShardHealth

CPU_BOTTLENECK_PERCENT = 80.0
LOOP_LAG_BOTTLENECK_MS = 100.0


def generator_bottleneck(health: Sequence[ShardHealth]) -> str | None:
    """Why the generator may have been the bottleneck, or None when every shard kept up."""
    reasons: list[str] = []
    for shard in health:
        if shard.cpu_percent > CPU_BOTTLENECK_PERCENT:
            reasons.append(
                f"shard {shard.shard} used {shard.cpu_percent:.0f}% of a CPU "
                f"(limit {CPU_BOTTLENECK_PERCENT:.0f}%)"
            )
        if shard.loop_lag_max_ms > LOOP_LAG_BOTTLENECK_MS:
            reasons.append(
                f"shard {shard.shard} event loop woke up to {shard.loop_lag_max_ms:.0f} ms late "
                f"(limit {LOOP_LAG_BOTTLENECK_MS:.0f} ms)"
            )
    return "; ".join(reasons) if reasons else None
