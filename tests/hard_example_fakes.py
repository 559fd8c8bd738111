"""Hard examples for tests, and a TEST DOUBLE of the cloud's ``POST /v1/hard-examples`` intake.

The real intake route belongs to the cloud service (built separately); :class:`FakeIntake`
implements exactly its contract so the device and gateway uploaders can be tested over
real HTTP: ``{"examples": [...]}`` in (bearer token required), ``{"accepted", "duplicates",
"rejected"}`` out, an in-memory dict of stored records keyed by id. It can be told to
answer 503, to hold requests (to stop a client mid-upload), and be stopped and started again
on the same port (connection refused meanwhile).
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any

import numpy as np
from flask import Flask, jsonify, request
from werkzeug.serving import BaseWSGIServer, make_server

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.errors import BatchError
from edgecascade.device_sdk.learning.batch import Receipt, Rejection, parse_batch
from edgecascade.device_sdk.learning.records import HardExample
from edgecascade.device_sdk.wire import codec


def example(n: int, device_id: str = "cam-01", reasons: tuple[str, ...] = ("degraded",)) -> HardExample:
    """A distinct, valid hard example (1-bit 7x7x8 features derived from ``n``)."""
    rng = np.random.default_rng(n)
    features = codec.encode_features(rng.choice([-1.0, 1.0], size=(7, 7, 8)), "1bit")
    return HardExample(device_id, 1, "cut1", "1bit", features, reasons, n % 10, 0.5, "device", 1.7e9 + n)


class FakeIntake:
    """TEST DOUBLE of the cloud's hard-example intake, on a loopback port (see module docstring)."""

    def __init__(self, tokens: dict[str, str]) -> None:
        self.tokens = dict(tokens)  # bearer token -> caller name
        self.stored: dict[str, dict[str, Any]] = {}
        self.arrivals: collections.Counter[str] = collections.Counter()  # id -> times received
        self.callers: collections.Counter[str] = collections.Counter()  # caller -> batches
        self.fail_status: int | None = None  # answer every request with this status
        self.open_gate = threading.Event()  # cleared: requests wait (a slow cloud)
        self.open_gate.set()
        self.held = threading.Event()  # set once a request waits at the closed gate
        self.reject_device: str | None = None  # records of this device are rejected
        self._lock = threading.Lock()
        self.port = 0
        self._server: BaseWSGIServer | None = None
        self.app = self._make_app()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeIntake:
        self._server = make_server("127.0.0.1", self.port, self.app, threaded=True)
        self.port = self._server.server_port
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self.open_gate.set()
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def wait_for(self, ids: set[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if ids <= self.stored.keys():
                    return True
            time.sleep(0.02)
        return False

    def _make_app(self) -> Flask:
        app = Flask("fake-intake")

        @app.post(wire.ROUTE_HARD_EXAMPLES)
        def intake() -> Any:
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            caller = self.tokens.get(token) if scheme == "Bearer" else None
            if caller is None:
                return jsonify(error="unauthorized", message="bad token"), 401
            if self.fail_status is not None:
                return jsonify(error="unavailable", message="down for the test"), self.fail_status
            if not self.open_gate.is_set():
                self.held.set()
                self.open_gate.wait(30)
            try:
                examples, rejected = parse_batch(request.get_data())
            except BatchError as exc:
                return jsonify(error=exc.reason, message=str(exc)), 400
            accepted, duplicates = [], []
            with self._lock:
                self.callers[caller] += 1
                for e in examples:
                    record = e.to_json()
                    self.arrivals[e.example_id] += 1
                    if e.device_id == self.reject_device:
                        rejected.append(Rejection(e.example_id, "device is not enrolled"))
                    elif e.example_id in self.stored:
                        duplicates.append(e.example_id)
                    else:
                        self.stored[e.example_id] = record
                        accepted.append(e.example_id)
            return jsonify(Receipt(tuple(accepted), tuple(duplicates), tuple(rejected)).to_json())

        return app
