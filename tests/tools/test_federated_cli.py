"""``edgecascade federated``: its commands against real services (the cloud app over HTTP, a
SuperLink, an SQLite cloud database), and the logic they share (following a run, schedules)."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from werkzeug.serving import make_server

from edgecascade.cloud_service.app import create_app
from edgecascade.cloud_service.config import CloudConfig, CloudSettings
from edgecascade.cloud_service.federation_store import FederationStore
from edgecascade.cloud_service.store import open_engine
from edgecascade.cloud_service.tokens import TokenStore
from edgecascade.device_sdk.errors import ConfigError, FlowerCommandError
from edgecascade.device_sdk.transport.http import CloudHttp
from edgecascade.federation import deploy
from edgecascade.federation.site_keys import load_private_key, new_site_key
from edgecascade.tools.certs import init_pki, issue_link
from edgecascade.tools.cli import main
from edgecascade.tools.federated_report import mean_bytes_per_site
from edgecascade.tools.federated_runs import (
    ApiRuns,
    DatabaseRuns,
    Follower,
    Outcome,
    progress_line,
    schedule_runs,
)
from edgecascade.tools.federation_setup import trusted_key_target
from edgecascade.tools.federation_stack import LocalFederation
from edgecascade.tools.foreground import run_foreground
from tests.cloud_service.conftest import EchoInference
from tests.federation_kit import make_tally


@dataclass
class Served:
    store: FederationStore
    options: list[str]  # --cloud URL --token-file F


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """The cloud app (a stand-in model, a real SQLite file) on a loopback port, with an admin token file."""
    settings = CloudSettings(
        bundle=tmp_path / "unused",
        token_store=tmp_path / "state" / "tokens.db",
        device_keyring=tmp_path / "state" / "device-keys",
        database_url=f"sqlite:///{tmp_path / 'state' / 'cloud.db'}",
        blob_dir=tmp_path / "state" / "blobs",
    )
    app = create_app(CloudConfig(settings), inference=EchoInference())  # type: ignore[arg-type]
    tokens: TokenStore = app.extensions["edgecascade.tokens"]
    token_file = tmp_path / "admin.token"
    token_file.write_text(tokens.create("admin", "ops")[0] + "\n")
    store = FederationStore(app.extensions["edgecascade.learning"].store.engine)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Served(
        store, ["--cloud", f"http://127.0.0.1:{server.server_port}", "--token-file", str(token_file)]
    )
    server.shutdown()
    thread.join(timeout=10)


def test_status_lists_the_runs_then_shows_one_with_its_rounds(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["federated", "status", *served.options]) == 0
    assert capsys.readouterr().out == "no federated runs yet\n"

    store = served.store
    old = store.start_run(strategy="fedavg", rounds=2, base_version=3, flower_run=99)
    store.record_round(
        old, make_tally(1, refused={"site-c": "signature"}, late=["site-d"]), state="completed"
    )
    store.record_round(old, make_tally(2, accepted={}, late=["site-a", "site-b"]), state="short")
    store.finish_run(old, state="published", candidate_version=4, gate={"accuracy": 0.9, "passed": True})
    new = store.start_run(strategy="median", rounds=5, base_version=4)
    store.set_stage(new, "round 1/5")

    assert main(["federated", "status", *served.options]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["run", "state", "rounds", "versions", "strategy", "stage"]
    assert lines[1].split() == [str(new), "running", "0/5", "v4", "→", "-", "median", "round", "1/5"]
    assert lines[2].split() == [str(old), "published", "2/2", "v3", "→", "v4", "fedavg", "published"]

    assert main(["federated", "status", str(old), *served.options]) == 0
    out = capsys.readouterr().out
    assert f"run {old}: published, fedavg, 2/2 rounds, v3 → v4" in out
    assert "Flower run 99" in out and '"accuracy": 0.9' in out and "finished after" in out
    table = out.splitlines()[-3:]
    assert table[0].split() == ["round", "state", "accepted", "late", "refused", "bytes/site", "seconds"]
    # round 1: 2 accepted of 4 sampled, each sent 50,000 bytes and was sent 200,000: 244.1 KiB a site
    assert table[1].split() == [
        "1",
        "completed",
        "2/4",
        "1",
        "1",
        "(site-c:",
        "signature)",
        "244.1",
        "KiB",
        "4.5",
    ]
    assert table[2].split() == ["2", "short", "0/2", "2", "0", "-", "4.5"]

    assert main(["federated", "status", str(new), "--json", *served.options]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["id"], shown["state"], shown["rounds"]) == (new, "running", [])


def test_a_run_the_cloud_does_not_have_is_reported_with_its_message(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["federated", "status", "42", *served.options]) == 1
    assert "no federated run 42" in capsys.readouterr().out


def test_an_unreachable_cloud_and_an_unreadable_token_file_fail_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token_file = tmp_path / "admin.token"
    argv = ["federated", "status", "--cloud", "http://127.0.0.1:9", "--token-file", str(token_file)]
    assert main(argv) == 2
    assert "cannot read --token-file" in capsys.readouterr().err
    token_file.write_text("ec_x.y\n")
    assert main([*argv, "--timeout", "2"]) == 1
    assert "the cloud did not show the runs" in capsys.readouterr().out


def test_mean_bytes_count_what_each_accepted_site_sent_and_was_sent() -> None:
    tally = make_tally(1, accepted={"a": 10, "b": 20}, refused={"c": "signature"})
    assert mean_bytes_per_site(tally) == 50_000 + 200_000
    assert mean_bytes_per_site(make_tally(1, accepted={}, late=["a"])) is None


# ------------------------------------------------------------------------------ keys, register, link
def test_keys_writes_the_site_key_pair_and_says_which_half_goes_to_the_cloud(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "site"
    assert main(["federated", "keys", "clinic-a", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    key, public = out / "clinic-a.key", out / "clinic-a.pub"
    assert f"{key} stays at the site" in said and f"hand {public} to the cloud's operator" in said
    assert key.stat().st_mode & 0o777 == 0o600
    assert load_private_key(key).public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ) == b" ".join(public.read_bytes().split()[:2])

    before = key.read_bytes()
    assert main(["federated", "keys", "clinic-a", "--out", str(out)]) == 2  # never replaces a key
    assert "refusing to replace a site key" in capsys.readouterr().err
    assert key.read_bytes() == before
    with pytest.raises(SystemExit) as exit_:
        main(["federated", "keys", "../clinic", "--out", str(out)])
    assert exit_.value.code == 2


def test_a_key_is_trusted_once_and_another_key_for_the_same_site_is_refused(tmp_path: Path) -> None:
    first_pub = new_site_key(tmp_path / "first", "clinic-a")[1]
    other_pub = new_site_key(tmp_path / "other", "clinic-a")[1]
    trusted = tmp_path / "trusted"
    assert trusted_key_target(trusted, "clinic-a", first_pub) == trusted / "clinic-a.pub"
    trusted.mkdir()
    # the same key with another comment is the same key: nothing to copy
    (trusted / "clinic-a.pub").write_bytes(b" ".join(first_pub.read_bytes().split()[:2]) + b" ops\n")
    assert trusted_key_target(trusted, "clinic-a", first_pub) is None
    with pytest.raises(ConfigError, match="already holds another key for site clinic-a"):
        trusted_key_target(trusted, "clinic-a", other_pub)
    assert trusted_key_target(trusted, "clinic-b", other_pub) == trusted / "clinic-b.pub"

    ed25519_pub = tmp_path / "ed.pub"
    ed25519_pub.write_bytes(
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    with pytest.raises(ConfigError, match="is not an EC P-256 key"):
        trusted_key_target(trusted, "clinic-c", ed25519_pub)
    with pytest.raises(ConfigError, match="is not an OpenSSH public key"):
        trusted_key_target(trusted, "clinic-c", tmp_path / "first" / "clinic-a.key")
    (trusted / "clinic-d.pub").write_text("garbage\n")  # an unreadable trusted file is not replaced either
    with pytest.raises(ConfigError, match="not an OpenSSH public key"):
        trusted_key_target(trusted, "clinic-d", first_pub)


def test_link_without_its_certificate_says_which_command_makes_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = init_pki(tmp_path / "pki")
    state = tmp_path / "state"
    assert main(["federated", "link", "--pki", str(pki.root), "--state", str(state)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"no SuperLink certificate {pki.link_cert}" in err
    assert f"run `edgecascade certs federation {pki.root}`" in err
    assert not state.exists()  # nothing written for a SuperLink that did not start


def test_start_needs_the_trusted_site_keys_and_a_way_to_the_superlink(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "cloud.toml"
    config.write_text('[federated]\nsite_keys = "sites"\n')
    state = tmp_path / "state"
    argv = ["federated", "start", "--config", str(config), "--state", str(state), "--wait"]
    assert main(argv) == 2
    assert f"site key directory {tmp_path / 'sites'} does not exist" in capsys.readouterr().err
    issue = new_site_key(tmp_path / "sites", "clinic-a")
    assert issue[1].exists()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "1 site keys in" in err and "min_sites is 2" in err  # a warning, then the error
    assert f"no Flower home in {state / 'flower-home'}: start `edgecascade federated link`" in err
    assert main([*argv, "--cloud", "http://127.0.0.1:9"]) == 2
    assert "--cloud and --token-file go together" in capsys.readouterr().err


# ------------------------------------------------------------------------------ following a run
@pytest.fixture
def runs(tmp_path: Path) -> Iterator[FederationStore]:
    engine = open_engine(f"sqlite:///{tmp_path / 'cloud.db'}")
    yield FederationStore(engine)
    engine.dispose()


def test_a_progress_line_says_the_stage_the_rounds_and_the_last_round(runs: FederationStore) -> None:
    run = runs.start_run(strategy="fedavg", rounds=3, base_version=4, flower_run=77)
    assert progress_line(_run(runs, run)) == f"run {run} running: starting | rounds 0/3"
    runs.set_stage(run, "round 2/3")
    runs.record_round(run, make_tally(1, refused={"site-c": "signature"}, late=["site-d"]), state="completed")
    assert progress_line(_run(runs, run)) == (
        f"run {run} running: round 2/3 | rounds 1/3 | round 1 completed: 2/4 accepted, 1 late, 1 refused"
    )
    runs.record_round(run, make_tally(2, accepted={}, late=["site-a", "site-b"]), state="short")
    runs.finish_run(run, state="published", candidate_version=5)
    assert progress_line(_run(runs, run)) == (
        f"run {run} published: v5 published, waiting for promotion | rounds 2/3 "
        "| round 2 short: 0/2 accepted, 2 late"
    )
    listed = runs.runs()[0]  # as listed: no rounds
    assert progress_line(listed).endswith("| rounds 2/3")

    promoted = runs.start_run(strategy="median", rounds=1, base_version=5)
    runs.finish_run(promoted, state="promoted", candidate_version=6)
    assert "promoted: v6 promoted, now served" in progress_line(_run(runs, promoted))
    rejected = runs.start_run(strategy="median", rounds=1, base_version=6)
    runs.finish_run(rejected, state="rejected", candidate_version=None, gate={"passed": False})
    assert f"run {rejected} rejected: the gate kept v6 |" in progress_line(_run(runs, rejected))
    failed = runs.start_run(strategy="median", rounds=1, base_version=None)
    runs.finish_run(failed, state="failed", error="RuntimeError: no sites")
    assert f"run {failed} failed: RuntimeError: no sites |" in progress_line(_run(runs, failed))


def _run(store: FederationStore, run_id: int) -> dict[str, Any]:
    found = store.run(run_id)
    assert found is not None
    return found


class Script:
    """A clock and a ``wait`` that play one scripted change of the records per wait."""

    def __init__(self, steps: list[Callable[[], object]]) -> None:
        self.steps, self.now, self.waits = list(steps), 0.0, 0

    def clock(self) -> float:
        return self.now

    def wait(self, seconds: float) -> bool:
        assert self.steps, "waited after the last scripted change"
        self.now += seconds
        self.waits += 1
        self.steps.pop(0)()
        return False


@pytest.mark.parametrize(("end", "code"), [("published", 0), ("promoted", 0), ("rejected", 3), ("failed", 1)])
def test_start_wait_shows_a_line_per_change_of_the_newest_run_of_its_flower_run(
    runs: FederationStore, end: str, code: int
) -> None:
    runs.start_run(strategy="fedavg", rounds=2, base_version=3, flower_run=8)  # an older run
    ids: list[int] = []

    def recorded() -> None:  # an earlier record of the same Flower run, then the newest: the one
        runs.finish_run(
            runs.start_run(strategy="fedavg", rounds=2, base_version=3, flower_run=9), state="failed"
        )
        ids.append(runs.start_run(strategy="fedavg", rounds=2, base_version=3, flower_run=9))
        runs.start_run(strategy="median", rounds=1, base_version=3, flower_run=10)  # a newer run

    steps: list[Callable[[], object]] = [
        lambda: None,  # not recorded yet: the ServerApp is loading the model
        recorded,
        lambda: runs.set_stage(ids[0], "round 1/2"),
        lambda: None,  # nothing changed: no line
        lambda: runs.record_round(ids[0], make_tally(1, late=["site-c"]), state="completed"),
        lambda: runs.set_stage(ids[0], "round 2/2"),
        lambda: runs.record_round(ids[0], make_tally(2), state="completed"),
        lambda: runs.finish_run(
            ids[0], state=end, candidate_version=4 if end != "failed" else None, error="boom"
        ),
    ]
    script = Script(steps)
    shown: list[str] = []
    follower = Follower(DatabaseRuns(runs), script.wait, clock=script.clock, poll=1.0)
    outcome = follower.follow("9", shown.append)
    assert outcome is not None and outcome.exit_code == code and outcome.state == end
    assert not script.steps
    run = ids[0]
    assert shown[:4] == [
        f"run {run} running: starting | rounds 0/2",
        f"run {run} running: round 1/2 | rounds 0/2",
        f"run {run} running: round 1/2 | rounds 1/2 | round 1 completed: 2/3 accepted, 1 late",
        f"run {run} running: round 2/2 | rounds 1/2 | round 1 completed: 2/3 accepted, 1 late",
    ]
    assert shown[4] == f"run {run} running: round 2/2 | rounds 2/2 | round 2 completed: 2/2 accepted, 0 late"
    assert shown[5].startswith(f"run {run} {end}: ") and len(shown) == 6
    assert outcome.message == shown[-1]


def test_a_run_is_followed_through_the_clouds_api_too(served: Served) -> None:
    run = served.store.start_run(strategy="median", rounds=1, base_version=2, flower_run=31)
    served.store.record_round(run, make_tally(1), state="completed")
    script = Script([lambda: served.store.finish_run(run, state="rejected", gate={"passed": False})])
    token = Path(served.options[3]).read_text().strip()
    with CloudHttp(served.options[1], token) as http:
        source = ApiRuns(http)
        assert source.run(run + 1) is None  # the API's 404
        shown: list[str] = []
        outcome = Follower(source, script.wait, clock=script.clock).follow("31", shown.append)
    assert outcome is not None and outcome.exit_code == 3
    assert shown == [
        f"run {run} running: starting | rounds 1/1 | round 1 completed: 2/2 accepted, 0 late",
        f"run {run} rejected: the gate kept v2 | rounds 1/1 | round 1 completed: 2/2 accepted, 0 late",
    ]


def test_a_run_that_never_appears_ends_the_wait_with_flowers_reason_or_a_timeout(
    runs: FederationStore,
) -> None:
    script = Script([lambda: None] * 30)
    flower: list[tuple[str, str] | None] = [
        None,  # not listed yet
        ("starting", "N/A"),
        ("finished:failed", "ServerApp failed with exception: no manifest.json in nope"),
    ]
    asked: list[str] = []

    def status(flower_run: str) -> tuple[str, str] | None:
        asked.append(flower_run)
        return flower.pop(0)

    shown: list[str] = []
    follower = Follower(DatabaseRuns(runs), script.wait, status, clock=script.clock, poll=2.0)
    outcome = follower.follow("5", shown.append)
    assert outcome is not None and outcome.exit_code == 1 and outcome.run is None
    assert shown == [
        "Flower run 5 ended (finished:failed: ServerApp failed with exception: no manifest.json in nope) "
        "before it recorded a run"
    ]
    assert asked == ["5"] * 3 and script.now == pytest.approx(30.0)  # asked every 10 s

    script = Script([lambda: None] * 30)
    follower = Follower(DatabaseRuns(runs), script.wait, clock=script.clock, poll=2.0, appear_timeout=20)
    outcome = follower.follow("5", shown.append)
    assert outcome is not None and outcome.exit_code == 1
    assert shown[-1].startswith("Flower run 5 has recorded no run after 20 s")
    assert script.now == pytest.approx(20.0)


def test_a_serverapp_that_died_without_recording_its_end_fails_the_wait(runs: FederationStore) -> None:
    run = runs.start_run(strategy="fedavg", rounds=5, base_version=1, flower_run=8)
    script = Script([lambda: None] * 40)
    ended = iter([("running", "N/A"), ("finished:failed", "N/A")])
    follower = Follower(DatabaseRuns(runs), script.wait, lambda _: next(ended), clock=script.clock, poll=2.0)
    shown: list[str] = []
    outcome = follower.follow("8", shown.append)
    assert outcome is not None and outcome.exit_code == 1 and outcome.run is not None
    assert shown == [
        f"run {run} running: starting | rounds 0/5",
        f"the ServerApp of Flower run 8 ended (finished:failed) but run {run} is still recorded as running",
    ]
    assert script.now == pytest.approx(60.0)  # Flower is asked every 30 s while the run is recorded


# ------------------------------------------------------------------------------ schedule
def test_a_schedule_starts_a_run_per_period_never_two_at_once() -> None:
    clock = [0.0]
    answers = iter(["1", None, "2", "3", "4"])  # None: the SuperLink cannot be reached that time
    took = {"1": 30.0, "2": 250.0, "3": 10.0, "4": 10.0}  # run 2 outlasts the period
    submitted: list[float] = []
    following: list[str] = []

    def submit() -> str:
        assert not following, "a run was submitted while another was under way"
        submitted.append(clock[0])
        answer = next(answers)
        if answer is None:
            raise FlowerCommandError("flwr run: the SuperLink is unreachable")
        return answer

    class Stub:
        """follow() takes the run's time; wait() sleeps, and says stop once five starts were tried."""

        def follow(self, flower_run: str, show: Callable[[str], None]) -> Outcome:
            following.append(flower_run)
            clock[0] += took[flower_run]
            following.pop()
            return Outcome("published", None, f"run {flower_run} published")

        def wait(self, seconds: float) -> bool:
            clock[0] += seconds
            return len(submitted) == 5

    shown: list[str] = []
    stub: Any = Stub()
    assert schedule_runs(submit, stub, 100.0, shown.append, clock=lambda: clock[0]) == 0
    assert submitted == [0.0, 100.0, 200.0, 450.0, 550.0]
    assert shown == [
        "started Flower run 1",
        "Flower run 1 ended: run 1 published",
        "could not start a run: flwr run: the SuperLink is unreachable",
        "started Flower run 2",
        "Flower run 2 ended: run 2 published",
        "that took 250 s, more than --every 100: the next run starts now",
        "started Flower run 3",
        "Flower run 3 ended: run 3 published",
        "started Flower run 4",
        "Flower run 4 ended: run 4 published",
        "stopping",
    ]


def test_a_schedule_stops_on_a_signal_and_leaves_the_run_it_follows_going() -> None:
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    shown: list[str] = []

    class Stub:
        def follow(self, flower_run: str, show: Callable[[str], None]) -> Outcome | None:
            threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()
            return None if stop.wait(30) else Outcome("published", None, "")

    stub: Any = Stub()
    try:
        started = time.monotonic()
        assert schedule_runs(lambda: "7", stub, 3600.0, shown.append) == 0
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert time.monotonic() - started < 10
    assert shown == ["started Flower run 7", "stopping; Flower run 7 goes on at the SuperLink"]


# ------------------------------------------------------------------------------ foreground daemons
CHILD = """
import pathlib, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))
pathlib.Path(sys.argv[1]).write_text("ready")
time.sleep(60)
sys.exit(1)
"""


def test_a_foreground_daemon_gets_our_stop_signal_and_we_exit_with_its_status(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    before = signal.getsignal(signal.SIGTERM)

    def stop_when_ready() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (
            ready.exists() and signal.getsignal(signal.SIGTERM) is not before
        ):
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)  # to us: passed on to the child

    threading.Thread(target=stop_when_ready, daemon=True).start()
    started = time.monotonic()
    assert run_foreground([sys.executable, "-c", CHILD, str(ready)]) == 7
    assert time.monotonic() - started < 30
    assert signal.getsignal(signal.SIGTERM) is before  # our own handler is back
    killed = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]
    assert run_foreground(killed) == 128 + signal.SIGKILL


# ------------------------------------------------------------------------------ against a real SuperLink
@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    """A SuperLink on a loopback port, started as `federated link` would, its state in ``root``."""
    root = tmp_path_factory.mktemp("federation")
    pki = init_pki(root / "pki")
    issue_link(pki.root)
    with LocalFederation(root / "state", pki) as federation:
        federation.start_link()
        yield federation


@pytest.mark.integration
def test_register_lets_a_site_in_and_trusts_its_key_but_never_replaces_one(
    federation: LocalFederation, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site_pub = new_site_key(tmp_path / "site", "clinic-a")[1]
    config = tmp_path / "cloud.toml"
    config.write_text('[federated]\nsite_keys = "trusted"\n')
    trusted = tmp_path / "trusted" / "clinic-a.pub"
    common = [
        "--pki",
        str(federation.pki.root),
        "--state",
        str(federation.root),
        "--cloud-config",
        str(config),
    ]
    argv = ["federated", "register", "clinic-a", "--public-key", str(site_pub), *common]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert re.search(r"^site clinic-a: registered as node [1-9][0-9]*$", out, re.M)
    assert f"the ServerApp trusts its updates now: {trusted}" in out
    assert trusted.read_bytes() == site_pub.read_bytes()

    assert main(argv) == 0  # again: nothing changes
    out = capsys.readouterr().out
    assert "site clinic-a: its key was registered before" in out and "already trusts its key" in out

    other_pub = new_site_key(tmp_path / "other", "clinic-a")[1]
    assert main(["federated", "register", "clinic-a", "--public-key", str(other_pub), *common]) == 2
    assert "already holds another key for site clinic-a" in capsys.readouterr().err
    assert trusted.read_bytes() == site_pub.read_bytes()

    # without --cloud-config the trusted keys are the PKI's; --superlink points a new state at the link
    b_pub = new_site_key(tmp_path / "b", "clinic-b")[1]
    argv = [
        "federated",
        "register",
        "clinic-b",
        "--public-key",
        str(b_pub),
        "--pki",
        str(federation.pki.root),
    ]
    argv += ["--state", str(tmp_path / "elsewhere"), "--superlink", federation.superlink]
    assert main(argv) == 0
    assert re.search(r"^site clinic-b: registered as node [1-9]", capsys.readouterr().out, re.M)
    assert (federation.pki.site_keys / "clinic-b.pub").read_bytes() == b_pub.read_bytes()
    # the refused key never reached the SuperLink: it is new to it
    assert deploy.register_site(federation.home, other_pub, "clinic-c") != 0


@pytest.mark.integration
def test_start_wait_ends_with_flowers_reason_when_the_serverapp_fails_before_recording_its_run(
    federation: LocalFederation, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for site in ("clinic-a", "clinic-b"):
        new_site_key(tmp_path / "sites", site)
    config = tmp_path / "cloud.toml"
    config.write_text(
        '[cloud]\nbundle = "no-model"\ndatabase_url = "sqlite:///cloud.db"\n'
        f'[federated]\nsite_keys = "sites"\nlink_address = "{federation.superlink}"\n'
    )
    argv = ["federated", "start", "--config", str(config), "--state", str(federation.root), "--wait"]
    assert main(argv) == 1
    out = capsys.readouterr().out
    submitted = re.search(r"^Flower run (\d+) submitted to the SuperLink at (\S+)$", out, re.M)
    assert submitted is not None and submitted[2] == federation.superlink
    assert (
        f"Flower run {submitted[1]} ended (finished:failed: ServerApp failed with exception: "
        f"no manifest.json in {tmp_path / 'no-model'}) before it recorded a run"
    ) in out
    assert (federation.root / "app" / "pyproject.toml").is_file()
