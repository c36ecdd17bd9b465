"""The start barrier inside a shard pod: say "ready" with a file, learn the start instant from
the pod's annotations.

The shard writes its ready file once it has connected and prepared; the pod's readiness probe
tests for that file, so the pod turns Ready. When every pod is Ready the orchestrator sets the
annotation `crucible/start-at=<epoch seconds>` on all of them, and the kubelet writes it into
the downward-API annotations file, one `key="value"` line per annotation (values quoted the
way Go quotes strings, which Python's string literals read the same way). The annotation
`crucible/halt` asks a running shard to stop early, as SIGTERM does.
"""

import ast
import os
import time
from collections.abc import Callable
from pathlib import Path

from crucible_dagster.launch.pods import ANNOTATION_HALT, ANNOTATION_START_AT

POLL_S = 0.02


def parse_annotations(text: str) -> dict[str, str]:
    """The annotations of a downward-API file; lines that do not parse are skipped."""
    annotations: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, quoted = line.partition("=")
        if not sep or not quoted.startswith('"'):
            continue
        try:
            value = ast.literal_eval(quoted)
        except (SyntaxError, ValueError):
            continue
        if isinstance(value, str):
            annotations[key.strip()] = value
    return annotations


def format_annotations(annotations: dict[str, str]) -> str:
    """The downward-API file text for `annotations`, sorted by key as the kubelet writes it."""
    lines = [f'{key}="{_quote(value)}"' for key, value in sorted(annotations.items())]
    return "".join(line + "\n" for line in lines)


def _quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return escaped.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


class PodBarrier:
    """The pod's side of the start barrier."""

    def __init__(self, ready_file: Path, annotations_file: Path) -> None:
        self.ready_file = ready_file
        self.annotations_file = annotations_file

    def mark_ready(self) -> None:
        """Writes the ready file (atomically, so the probe never sees half a file)."""
        self.ready_file.parent.mkdir(parents=True, exist_ok=True)
        partial = self.ready_file.with_name(self.ready_file.name + ".partial")
        partial.write_text("ready\n")
        os.replace(partial, self.ready_file)

    def annotations(self) -> dict[str, str]:
        try:
            return parse_annotations(self.annotations_file.read_text())
        except (FileNotFoundError, NotADirectoryError):
            return {}

    def halt_requested(self) -> bool:
        """Whether the orchestrator asked the shard to stop early."""
        return ANNOTATION_HALT in self.annotations()

    def start_at(self) -> float | None:
        """The published start instant, or None while there is none (or it does not parse)."""
        value = self.annotations().get(ANNOTATION_START_AT)
        if value is None:
            return None
        try:
            instant = float(value)
        except ValueError:
            return None
        return instant if instant > 0 else None

    def wait_for_start_at(
        self, give_up: Callable[[], bool], poll_s: float = POLL_S
    ) -> float | None:
        """Waits for the start instant; None when `give_up()` turns true first."""
        while not give_up():
            instant = self.start_at()
            if instant is not None:
                return instant
            time.sleep(poll_s)
        return None
