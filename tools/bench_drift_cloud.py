"""The drift benchmark's calls to the cloud: the hard examples that arrived, labels, the retraining
job, the site's exit thresholds.

:class:`DriftAdmin` speaks the cloud's admin routes with an ``admin`` token through the
project's one HTTP client (:class:`~edgecascade.device_sdk.transport.http.CloudHttp`), trusting
the site CA; errors surface as the project's transport errors.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.transport.http import CloudHttp

PAGE = 1000  # hard-example ids per listing page


class DriftAdmin:
    """The cloud's admin API over HTTPS: list and label hard examples, run and follow a retraining job."""

    def __init__(self, url: str, token: str, ca_file: Path, timeout: float = 30.0) -> None:
        self.http = CloudHttp(url, token, timeout=timeout, ca_file=ca_file, user_agent="edgecascade-bench")

    def call(self, method: str, route: str, body: Any = None) -> Any:
        """One JSON call (``body`` sent as JSON unless None); the JSON answer."""
        return self.http.call_json(method, route, body)

    def example_ids(self, device_id: str) -> set[str]:
        """Ids of every hard example of ``device_id`` the cloud holds (all pages)."""
        ids: set[str] = set()
        cursor = ""
        while True:
            query = urllib.parse.urlencode({"device_id": device_id, "limit": PAGE, "cursor": cursor})
            page = self.call("GET", f"{wire.ROUTE_HARD_EXAMPLES}?{query}")
            ids.update(e["id"] for e in page["examples"])
            cursor = page.get("next_cursor") or ""
            if not cursor:
                return ids

    def label(self, example_id: str, label: int) -> None:
        """Set the true class of one hard example (``PUT /v1/hard-examples/<id>/label``)."""
        self.call("PUT", f"{wire.ROUTE_HARD_EXAMPLES}/{example_id}/label", {"label": label})

    def retrain(self) -> dict[str, Any]:
        """Start one retraining job; its state."""
        job: dict[str, Any] = self.call("POST", "/v1/retrain")
        return job

    def job(self, job_id: str) -> dict[str, Any]:
        """A job's state (without its log)."""
        job: dict[str, Any] = self.call("GET", f"/v1/jobs/{job_id}?log_lines=0")
        return job

    def site_thresholds(self, site: str, min_examples: int) -> dict[str, Any]:
        """Fit ``site``'s exit thresholds on its audited examples; the signed overlay (file, signature)."""
        answer: dict[str, Any] = self.call(
            "POST", f"/v1/sites/{site}/thresholds", {"min_examples": min_examples}
        )
        return answer

    def served_version(self) -> int:
        """The model version the cloud serves now (``/healthz``)."""
        return int(self.call("GET", wire.ROUTE_HEALTH)["version"])

    def close(self) -> None:
        self.http.close()
