"""Following a collaborative training run to its end, and starting runs on a schedule.

What ``edgecascade federated start --wait`` and ``edgecascade federated schedule`` do once a
run is submitted. The ServerApp records its run in the cloud database when it starts (a few
seconds after the submission: it loads the served model first); the run to follow is the
newest one whose ``flower_run`` is the submitted Flower run id. Its records are read from
the database (:class:`DatabaseRuns`) or the cloud's API (:class:`ApiRuns`), one progress
line printed per change (:func:`progress_line`). Flower's own view of the run (``flwr ls``)
is asked now and then, so a ServerApp that died without recording its end, or before
recording its start, ends the wait with Flower's reason instead of a wait forever.

How a followed run ended is an exit status: 0 the aggregate was published or promoted,
3 the gate rejected it, 1 the run failed (or never appeared).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from edgecascade.device_sdk.errors import (
    EXIT_ERROR,
    EXIT_MODEL,
    EXIT_OK,
    EdgeCascadeError,
    RemoteError,
    StorageError,
    TransportError,
)

if TYPE_CHECKING:
    from edgecascade.cloud_service.federation_store import FederationStore
    from edgecascade.device_sdk.transport.http import CloudHttp

logger = logging.getLogger(__name__)

ROUTE = "/v1/federated/runs"  # the cloud's ROUTE_FEDERATED_RUNS
NEWEST = 20  # runs read when looking for the submitted one
POLL_SECONDS = 2.0
APPEAR_SECONDS = 120.0  # how long a submitted run may take to appear in the cloud database
FLOWER_CHECK_STARTING = 10.0  # seconds between asking Flower about a run not recorded yet
FLOWER_CHECK_RUNNING = 30.0  # ... and about a run recorded as running
FINAL_EXIT = {"published": EXIT_OK, "promoted": EXIT_OK, "rejected": EXIT_MODEL, "failed": EXIT_ERROR}

Show = Callable[[str], None]
FlowerStatus = Callable[[str], "tuple[str, str] | None"]  # Flower run id -> (status, details)


class RunSource(Protocol):
    """Where the runs' records are read: the newest runs (no rounds), one run with its rounds."""

    def newest(self) -> list[dict[str, Any]]: ...

    def run(self, run_id: int) -> dict[str, Any] | None: ...


class DatabaseRuns:
    """The records in the cloud database, read directly (database errors are StorageErrors)."""

    def __init__(self, store: FederationStore) -> None:
        self.store = store

    def newest(self) -> list[dict[str, Any]]:
        return self._read(lambda: self.store.runs(NEWEST))

    def run(self, run_id: int) -> dict[str, Any] | None:
        return self._read(lambda: self.store.run(run_id))

    def _read(self, read: Callable[[], Any]) -> Any:
        import sqlalchemy as sa

        try:
            return read()
        except sa.exc.SQLAlchemyError as exc:
            raise StorageError(f"cannot read the federated runs: {exc}") from None


class ApiRuns:
    """The records as the cloud's API shows them (an admin token)."""

    def __init__(self, http: CloudHttp) -> None:
        self.http = http

    def newest(self) -> list[dict[str, Any]]:
        return list(self.http.call_json("GET", f"{ROUTE}?limit={NEWEST}")["runs"])

    def run(self, run_id: int) -> dict[str, Any] | None:
        try:
            return dict(self.http.call_json("GET", f"{ROUTE}/{run_id}"))
        except RemoteError as exc:
            if exc.code == 404:
                return None
            raise


def progress_line(run: Mapping[str, Any]) -> str:
    """One line of a run: its state and what it does (or how it ended), rounds done, the last round."""
    state = run["state"]
    if state == "running":
        what = run["stage"]
    elif state in ("published", "promoted"):
        what = f"v{run['candidate_version']} " + (
            "published, waiting for promotion" if state == "published" else "promoted, now served"
        )
    elif state == "rejected":
        kept = run.get("base_version")
        what = "the gate kept " + ("the served version" if kept is None else f"v{kept}")
    else:
        what = run.get("error") or "no error recorded"
    line = f"run {run['id']} {state}: {what} | rounds {run['rounds_done']}/{run['rounds_planned']}"
    rounds = run.get("rounds") or []
    if rounds:
        last = rounds[-1]
        line += (
            f" | round {last['server_round']} {last['state']}: "
            f"{last['accepted']}/{last['sampled']} accepted, {last['late']} late"
        )
        line += "".join(f", {last[k]} {k}" for k in ("refused", "failed") if last.get(k))
    return line


@dataclass(frozen=True)
class Outcome:
    """How a followed run ended: its final state, its record (if it appeared), the last line said."""

    state: str
    run: dict[str, Any] | None
    message: str

    @property
    def exit_code(self) -> int:
        return FINAL_EXIT.get(self.state, EXIT_ERROR)


@dataclass
class Follower:
    """Follows submitted runs in ``source``; ``wait(seconds)`` sleeps and answers True to stop."""

    source: RunSource
    wait: Callable[[float], bool]
    flower_status: FlowerStatus | None = None
    clock: Callable[[], float] = time.monotonic
    poll: float = POLL_SECONDS
    appear_timeout: float = APPEAR_SECONDS

    def follow(self, flower_run: str, show: Show) -> Outcome | None:
        """Show a line per change of the run until it ends; its outcome, or None when told to stop."""
        found = self._appear(flower_run)
        if isinstance(found, Outcome):
            show(found.message)
        if not isinstance(found, dict):
            return found
        run_id, last = int(found["id"]), ""
        next_check = self.clock() + FLOWER_CHECK_RUNNING
        while True:
            run = self._read(lambda: self.source.run(run_id))
            if run is not None:
                line = progress_line(run)
                if line != last:
                    show(line)
                    last = line
                if run["state"] != "running":
                    return Outcome(run["state"], run, line)
            if self.flower_status is not None and self.clock() >= next_check:
                next_check = self.clock() + FLOWER_CHECK_RUNNING
                ended = self._flower_ended(flower_run)
                if ended is not None:
                    run = self._read(lambda: self.source.run(run_id))
                    if run is not None and run["state"] != "running":
                        continue  # it ended between the two reads: shown at the top
                    outcome = Outcome(
                        "failed",
                        run,
                        f"the ServerApp of Flower run {flower_run} ended ({ended}) but run {run_id} "
                        "is still recorded as running",
                    )
                    show(outcome.message)
                    return outcome
            if self.wait(self.poll):
                return None

    def _appear(self, flower_run: str) -> dict[str, Any] | Outcome | None:
        """The run's record once the ServerApp has written it; an Outcome if it never will."""
        deadline = self.clock() + self.appear_timeout
        next_check = self.clock() + FLOWER_CHECK_STARTING
        while True:
            found = self._find(flower_run)
            if found is not None:
                return found
            now = self.clock()
            if self.flower_status is not None and now >= next_check:
                next_check = now + FLOWER_CHECK_STARTING
                ended = self._flower_ended(flower_run)
                if ended is not None and self._find(flower_run) is None:
                    return Outcome(
                        "failed", None, f"Flower run {flower_run} ended ({ended}) before it recorded a run"
                    )
            if now >= deadline:
                return Outcome(
                    "failed",
                    None,
                    f"Flower run {flower_run} has recorded no run after {self.appear_timeout:.0f} s: "
                    "is the SuperLink running its ServerApp? (see its output)",
                )
            if self.wait(self.poll):
                return None

    def _find(self, flower_run: str) -> dict[str, Any] | None:
        runs = self._read(self.source.newest) or []
        return next((r for r in runs if str(r.get("flower_run")) == flower_run), None)

    def _flower_ended(self, flower_run: str) -> str | None:
        """Flower's ``status: details`` of the run once it has finished; None while it has not."""
        assert self.flower_status is not None
        try:
            status = self.flower_status(flower_run)
        except EdgeCascadeError as exc:
            logger.warning("cannot ask the SuperLink about Flower run %s: %s", flower_run, exc)
            return None
        if status is None or not status[0].startswith("finished"):
            return None
        details = status[1] if status[1] not in ("", "N/A") else ""
        return f"{status[0]}: {details}" if details else status[0]

    def _read(self, read: Callable[[], Any]) -> Any:
        """What ``read`` returns; None (and a warning) when the records cannot be read just now."""
        try:
            return read()
        except RemoteError as exc:
            if 400 <= exc.code < 500:  # a refused token or route: asking again will not help
                raise
            logger.warning("cannot read the federated runs now: %s", exc)
        except (StorageError, TransportError) as exc:
            logger.warning("cannot read the federated runs now: %s", exc)
        return None


def schedule_runs(
    submit: Callable[[], str],
    follower: Follower,
    every: float,
    show: Show,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Submit a run every ``every`` seconds, never two at once, until ``follower.wait`` says stop.

    A run that outlasts the period delays the next, which then starts as soon as it ends; a
    submission that fails is reported and tried again at the next start. Returns 0.
    """
    while True:
        begun = clock()
        try:
            flower_run = submit()
        except EdgeCascadeError as exc:
            show(f"could not start a run: {exc}")
        else:
            show(f"started Flower run {flower_run}")
            outcome = follower.follow(flower_run, show=lambda line: None)
            if outcome is None:
                show(f"stopping; Flower run {flower_run} goes on at the SuperLink")
                return 0
            show(f"Flower run {flower_run} ended: {outcome.message}")
        pause = begun + every - clock()
        if pause < 0:
            show(f"that took {every - pause:.0f} s, more than --every {every:g}: the next run starts now")
        if follower.wait(max(pause, 0.0)):
            show("stopping")
            return 0


def flower_status(home: Path) -> FlowerStatus:
    """Flower's ``(status, details)`` of a run, as ``flwr ls`` shows it; None when it does not list it."""
    from edgecascade.federation import deploy

    def status(flower_run: str) -> tuple[str, str] | None:
        for run in deploy.flower_runs(home):
            if str(run.get("run-id")) == flower_run:
                return str(run.get("status", "")), str(run.get("status-details", ""))
        return None

    return status
