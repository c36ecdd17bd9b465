"""Results in object storage: `results/<run_id>/result.json`, and finding a plan's latest."""

import re

from pydantic import ValidationError as PydanticValidationError

from crucible_dagster.errors import StorageError
from crucible_dagster.results.model import Result
from crucible_dagster.storage import Storage

RESULTS_PREFIX = "results/"


def result_key(run_id: str) -> str:
    return f"{RESULTS_PREFIX}{run_id}/result.json"


def write_result(storage: Storage, result: Result) -> str:
    """Stores the result and returns its URI."""
    key = result_key(result.run_id)
    storage.put_bytes(key, result.model_dump_json(indent=2).encode())
    return storage.uri(key)


def read_result(storage: Storage, run_id: str) -> Result:
    key = result_key(run_id)
    try:
        return Result.model_validate_json(storage.get_bytes(key))
    except PydanticValidationError as exc:
        raise StorageError(f"{storage.uri(key)} is not a Crucible result: {exc}") from exc


def latest_result(storage: Storage, plan: str) -> Result | None:
    """The most recent result of `plan`, by the minute in its run id, then by its start time."""
    pattern = re.compile(rf"^{re.escape(RESULTS_PREFIX)}({re.escape(plan)}_(\d{{8}}-\d{{4}})_"
                         r"[0-9a-f]{8})/result\.json$")  # fmt: skip
    candidates: dict[str, list[str]] = {}
    for info in storage.list(RESULTS_PREFIX + plan + "_"):
        match = pattern.match(info.key)
        if match:
            candidates.setdefault(match.group(2), []).append(match.group(1))
    if not candidates:
        return None
    # Run ids carry only the minute; several runs in the same minute are told apart by when
    # their results were written.
    newest_minute = max(candidates)
    results = [read_result(storage, run_id) for run_id in candidates[newest_minute]]
    return max(results, key=lambda r: (r.recorded_at, r.run_id))
