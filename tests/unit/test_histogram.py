import random

from hdrh.histogram import HdrHistogram

from crucible_dagster.engine import histogram


def _values(seed: int, n: int) -> list[int]:
    rng = random.Random(seed)
    # Latencies from 1 µs to minutes, heavy-tailed like real service times.
    return [max(1, int(rng.lognormvariate(6, 2.5))) for _ in range(n)]


def _fed(values: list[int]) -> HdrHistogram:
    reference = histogram.new_histogram()
    for value in values:
        reference.record_value(value)
    return reference


def test_inline_index_matches_hdrh_for_every_magnitude() -> None:
    reference = histogram.new_histogram()
    values = [0, 1, 2, 1023, 1024, 2047, 2048, 2049, 4095, 4096, 10**6, 3_600_000_000]
    values += _values(1, 5000)

    for value in values:
        assert histogram.counts_index(value) == reference._counts_index_for(value), value


def test_recorder_yields_the_histogram_hdrh_would_build() -> None:
    values = _values(2, 20_000)
    recorder = histogram.LatencyRecorder()
    for value in values:
        recorder.record(value)

    built = recorder.to_histogram()
    reference = _fed(values)

    assert built.get_total_count() == len(values) == recorder.total
    assert built.equals(reference)
    for percentile in (0, 50, 90, 95, 99, 99.9, 100):
        assert built.get_value_at_percentile(percentile) == reference.get_value_at_percentile(
            percentile
        )


def test_values_beyond_the_range_are_clamped_not_lost() -> None:
    recorder = histogram.LatencyRecorder()
    recorder.record(10 * 3_600_000_000)

    assert recorder.to_histogram().get_total_count() == 1


def test_encoded_histograms_decode_to_equal_histograms() -> None:
    original = _fed(_values(3, 1000))

    decoded = histogram.decode(histogram.encode(original))

    assert histogram.encode(original).startswith("HISTF")
    assert decoded.equals(original)


def test_merging_shard_histograms_equals_one_histogram_fed_all_values() -> None:
    shards = [_values(seed, 3000) for seed in (10, 11, 12)]
    encoded = [histogram.encode(_fed(values)) for values in shards]

    merged = histogram.merge(histogram.decode(e) for e in encoded)
    everything = _fed([v for values in shards for v in values])

    assert merged.get_total_count() == everything.get_total_count() == 9000
    assert merged.get_min_value() == everything.get_min_value()
    assert merged.get_max_value() == everything.get_max_value()
    for percentile in (50, 95, 99, 99.99):
        assert merged.get_value_at_percentile(percentile) == everything.get_value_at_percentile(
            percentile
        )


def test_empty_shard_histograms_do_not_change_the_merge() -> None:
    values = _values(4, 500)
    empty = histogram.new_histogram()

    merged = histogram.merge([empty, _fed(values), histogram.new_histogram()])

    assert merged.get_total_count() == len(values)
    assert merged.get_min_value() == _fed(values).get_min_value()


def test_merge_of_nothing_is_an_empty_histogram() -> None:
    assert histogram.merge([]).get_total_count() == 0
