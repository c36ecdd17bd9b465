"""HDR histograms of service times: microseconds, 1 µs to 1 h, 3 significant digits.

The hot loop does not call `HdrHistogram.record_value` (a few microseconds in pure Python, a
tenth of a `SELECT 1` round trip): it computes the same bucket index inline and counts into a
plain list (`LatencyRecorder`), which becomes a real `HdrHistogram` when the shard reports.
The index maths is checked against hdrh's own in the unit tests.
"""

from collections.abc import Iterable

from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 3_600_000_000
SIGNIFICANT_DIGITS = 3


def new_histogram() -> HdrHistogram:
    """An empty histogram with Crucible's range and precision."""
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


_LAYOUT = new_histogram()
# The inline index below assumes a unit magnitude of 0, which a lowest value of 1 gives.
assert _LAYOUT.unit_magnitude == 0
COUNTS_LEN: int = _LAYOUT.counts_len
SUB_BUCKET_MASK: int = _LAYOUT.sub_bucket_mask
HALF_COUNT_MAGNITUDE: int = _LAYOUT.sub_bucket_half_count_magnitude
BUCKET_SHIFT: int = HALF_COUNT_MAGNITUDE + 1
MAX_TRACKABLE_US: int = _LAYOUT.get_highest_equivalent_value(
    _LAYOUT.get_value_from_index(COUNTS_LEN - 1)
)


def counts_index(value_us: int) -> int:
    """The index hdrh would count `value_us` at (the hot loop inlines this expression)."""
    bucket = (value_us | SUB_BUCKET_MASK).bit_length() - BUCKET_SHIFT
    return (bucket << HALF_COUNT_MAGNITUDE) + (value_us >> bucket)


class LatencyRecorder:
    """Counts microsecond values into hdrh's bucket layout without hdrh's per-call cost."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: list[int] = [0] * COUNTS_LEN

    def record(self, value_us: int) -> None:
        self.counts[counts_index(min(max(value_us, 0), MAX_TRACKABLE_US))] += 1

    @property
    def total(self) -> int:
        return sum(self.counts)

    def to_histogram(self) -> HdrHistogram:
        """The same counts as a real `HdrHistogram`, exact to hdrh's resolution."""
        histogram = new_histogram()
        for index, count in enumerate(self.counts):
            if count:
                histogram.record_value(histogram.get_value_from_index(index), count)
        return histogram


def encode(histogram: HdrHistogram) -> str:
    """HDR V2, compressed and base64 encoded, as the result JSON stores it."""
    return histogram.encode().decode("ascii")


def decode(encoded: str) -> HdrHistogram:
    return HdrHistogram.decode(encoded)


def merge(histograms: Iterable[HdrHistogram]) -> HdrHistogram:
    """Adds histograms exactly (counts per bucket), skipping empty ones.

    Empty histograms are skipped because hdrh's `add` takes the minimum of the minimums and
    reports 0 as the minimum of an empty histogram, which would wipe out the real minimum.
    """
    merged = new_histogram()
    for histogram in histograms:
        if histogram.get_total_count() == 0:
            continue
        if merged.get_total_count() == 0:
            merged = new_histogram()
            merged.add(histogram)
            merged.min_value = histogram.min_value
        else:
            merged.add(histogram)
    return merged
