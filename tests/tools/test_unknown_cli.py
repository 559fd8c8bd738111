"""``edgecascade unknown``: list, refresh, show and name groups of a real cloud served over HTTP."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from edgecascade.tools.cli import main
from tests.learning_kit import LearningCloud, RecordingLauncher, make_learning_cloud
from tests.unknown_kit import synthetic


@pytest.fixture
def served(tmp_path: Path, tiny_bundle: Path) -> Iterator[tuple[LearningCloud, list[str]]]:
    """A cloud holding two kinds of unknown uploads (one with images), on a loopback port, and the
    options that reach it with an admin token."""
    lc = make_learning_cloud(tmp_path, tiny_bundle, RecordingLauncher())
    records = synthetic(tiny_bundle, "cut1", 1, 12) + synthetic(tiny_bundle, "cut1", 2, 12, images=True)
    answer = lc.client.post(
        "/v1/hard-examples", json={"examples": [r.to_json() for r in records]}, headers=lc.auth("gateway")
    )
    assert len(answer.json["accepted"]) == 24
    token_file = tmp_path / "admin.token"
    token_file.write_text(lc.token("admin") + "\n")
    server = make_server("127.0.0.1", 0, lc.app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield lc, ["--cloud", f"http://127.0.0.1:{server.server_port}", "--token-file", str(token_file)]
    server.shutdown()
    thread.join(timeout=10)


def test_groups_are_refreshed_shown_and_named_from_the_command_line(
    served: tuple[LearningCloud, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lc, cloud = served
    assert main(["unknown", "groups", *cloud]) == 0
    assert "no groups yet" in capsys.readouterr().out

    assert main(["unknown", "groups", "--refresh", *cloud]) == 0
    out = capsys.readouterr().out
    assert "cut1: 24 ungrouped" in out and "unnamed, with images" in out
    listing = lc.client.get("/v1/unknown-groups", headers=lc.auth("admin")).json
    pictured = next(g for g in listing["groups"] if g["has_images"])

    picture = tmp_path / "group.png"
    assert main(["unknown", "show", str(pictured["id"]), "--png", str(picture), *cloud]) == 0
    out = capsys.readouterr().out
    assert f"group {pictured['id']}: cut1, {pictured['size']} examples" in out
    assert all(i in out for i in pictured["examples"])
    assert picture.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

    assert main(["unknown", "name", str(pictured["id"]), "Umbrella", *cloud]) == 0
    assert "class 10 'Umbrella'" in capsys.readouterr().out  # after the tiny model's 10 classes
    assert main(["unknown", "name", str(pictured["id"]), "Hat", *cloud]) == 1
    assert "already named 'Umbrella'" in capsys.readouterr().out
    assert main(["unknown", "show", "999", *cloud]) == 1
    assert "no unknown group 999" in capsys.readouterr().out


def test_an_unreadable_token_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["unknown", "groups", "--cloud", "http://127.0.0.1:9", "--token-file", str(tmp_path / "none")]
    assert main(argv) == 2
    assert "cannot read --token-file" in capsys.readouterr().err
