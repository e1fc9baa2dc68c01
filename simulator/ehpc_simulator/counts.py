"""Answer counters of a simulated endpoint (the E-HPC Instant gateway and the STS count alike)."""

from __future__ import annotations

from typing import Any


class AnswerCounter:
    """Counts every answer an endpoint sends by (action, code, HTTP status); 0 where none was sent."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str, int], int] = {}

    def _count(self, action: str, code: str, status: int) -> None:
        key = (action, code, status)
        self._counts[key] = self._counts.get(key, 0) + 1

    def counters(self) -> dict[tuple[str, str], int]:
        """(action, code) -> answers sent, ``Success`` for 200s; transport faults under the client's code."""
        out: dict[tuple[str, str], int] = {}
        for (action, code, _status), n in self._counts.items():
            out[action, code] = out.get((action, code), 0) + n
        return out

    def counter_rows(self) -> list[dict[str, Any]]:
        """The counters with the HTTP status of each (0 when no answer was sent), sorted."""
        return [
            {"action": a, "code": c, "http_status": s, "count": n}
            for (a, c, s), n in sorted(self._counts.items())
        ]

    def reset_counters(self) -> None:
        """Forget every count."""
        self._counts.clear()
