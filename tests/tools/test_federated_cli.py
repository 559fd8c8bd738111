"""``edgecascade federated status``: runs and rounds of a real cloud app served over HTTP."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from edgecascade.cloud_service.app import create_app
from edgecascade.cloud_service.config import CloudConfig, CloudSettings
from edgecascade.cloud_service.federation_store import FederationStore
from edgecascade.cloud_service.tokens import TokenStore
from edgecascade.tools.cli import main
from edgecascade.tools.federated_cli import mean_bytes_per_site
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
