"""Per-site exit thresholds in the real cloud app: fitted from one site's audited examples on the
served tiny bundle (LiteRT), signed into the registry, handed to the site's nodes; a site's
human-labelled examples handed back to it alone; bad input is a 4xx."""

from __future__ import annotations

import dataclasses
import io
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from werkzeug.serving import make_server

from edgecascade.cloud_service.site_examples import SiteExamples
from edgecascade.cloud_service.site_thresholds import audited_examples, fit_overlay
from edgecascade.device_sdk.core.chain import run_partitions
from edgecascade.device_sdk.core.thresholds import choose_thresholds
from edgecascade.device_sdk.learning.records import HardExample
from edgecascade.device_sdk.model.bundle import load_bundle
from edgecascade.device_sdk.model.overlay import SiteOverlay, parse_overlay
from edgecascade.federation.site_data import load_labelled_examples
from edgecascade.tools.cli import main
from tests.cloud_service.full_cloud import FullCloud, make_full_cloud
from tests.learning_kit import device_examples, with_raw

SITE_IMAGES = 40  # per site: site-a's are shifted (a washed-out camera), site-b's are not
SHIFT = (0.5, 60.0)


def shifted(images: np.ndarray) -> np.ndarray:
    contrast, offset = SHIFT
    return np.clip(images.astype(np.float32) * contrast + offset, 0, 255).round().astype(np.uint8)


def audited(bundle: Path, images: np.ndarray, reasons: tuple[str, ...] = ("audit",)) -> list[dict[str, Any]]:
    examples: list[HardExample] = device_examples(bundle, images)
    return [
        with_raw(dataclasses.replace(e, reasons=reasons), image).to_json()
        for e, image in zip(examples, images, strict=True)
    ]


@pytest.fixture
def cloud(tmp_path: Path, tiny_bundle: Path, fmnist: Any) -> FullCloud:
    """The full cloud with site-a's and site-b's audited examples (and a site-a one that is not
    audited), each labelled with its true class by the operator."""
    full = make_full_cloud(tmp_path, tiny_bundle)
    client = full.app.test_client()
    x, y = fmnist.x_test, fmnist.y_test
    uploads = [
        ("site-a", audited(tiny_bundle, shifted(x[:SITE_IMAGES])), y[:SITE_IMAGES]),
        ("site-b", audited(tiny_bundle, x[100 : 100 + SITE_IMAGES]), y[100 : 100 + SITE_IMAGES]),
        ("site-a", audited(tiny_bundle, shifted(x[200:210]), ("low_margin",)), y[200:210]),
    ]
    admin = {"Authorization": f"Bearer {full.token('admin', 'ops')}"}
    for site, records, labels in uploads:
        token = {"Authorization": f"Bearer {full.token('gateway', site)}"}
        answer = client.post("/v1/hard-examples", json={"examples": records}, headers=token)
        assert answer.status_code == 200 and len(answer.json["accepted"]) == len(records), answer.json
        for record, label in zip(records, labels, strict=True):
            put = client.put(
                f"/v1/hard-examples/{record['id']}/label", json={"label": int(label)}, headers=admin
            )
            assert put.status_code == 200
    return full


@contextmanager
def serving(cloud: FullCloud) -> Iterator[str]:
    """The app served on a free loopback port, for the command line; its URL."""
    server = make_server("127.0.0.1", 0, cloud.app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join()


def admin(cloud: FullCloud) -> dict[str, str]:
    return {"Authorization": f"Bearer {cloud.token('admin', 'ops')}"}


def test_a_sites_thresholds_are_fitted_on_its_own_audited_examples_only(
    cloud: FullCloud, tiny_bundle: Path, fmnist: Any, tmp_path: Path
) -> None:
    client = cloud.app.test_client()
    answer = client.post("/v1/sites/site-a/thresholds", json={"min_examples": 20}, headers=admin(cloud))
    assert answer.status_code == 200, answer.json
    overlay = SiteOverlay.from_dict(answer.json["overlay"])
    assert overlay.site == "site-a" and overlay.examples == SITE_IMAGES  # not site-b's, not the unaudited
    assert set(overlay.exits) == {"device", "gateway"} and overlay.version == 1

    # the same rule, computed here on site-a's images alone, gives the same thresholds
    bundle = load_bundle(tiny_bundle)
    probs = run_partitions(bundle, shifted(fmnist.x_test[:SITE_IMAGES])).probs
    expected = choose_thresholds(
        probs, fmnist.y_test[:SITE_IMAGES], 0.0, bundle.manifest.partitions[0].exit.score
    )
    assert (overlay.exits["device"].threshold, overlay.exits["gateway"].threshold) == pytest.approx(
        expected[:2]
    )
    manifest = bundle.manifest
    assert overlay.exits["device"].temperature == manifest.partition("device").exit.temperature

    # signed with the registry's key, kept in the registry, handed out to the site's nodes
    public = tmp_path / "keys" / "cloud-signing.pub"
    content, signature = answer.json["file"].encode(), answer.json["signature"].encode()
    assert parse_overlay(content, signature, public) == overlay
    kept = tmp_path / "models" / "sites" / "site-a" / "v1.json"
    assert kept.read_bytes() == content
    device = {"Authorization": f"Bearer {cloud.token('device', 'cam-01')}"}
    got = client.get("/v1/sites/site-a/overlay", headers=device)
    assert got.status_code == 200 and got.json["file"].encode() == content
    assert client.get("/v1/sites/site-a/overlay?version=2", headers=device).status_code == 404
    assert client.get("/v1/sites/site-b/overlay", headers=device).status_code == 404  # not fitted yet


def test_too_few_examples_is_a_400_that_says_how_many_are_needed(cloud: FullCloud) -> None:
    client = cloud.app.test_client()
    answer = client.post("/v1/sites/site-a/thresholds", headers=admin(cloud))  # the default: 100
    assert answer.status_code == 400
    assert f"has {SITE_IMAGES} labelled audited examples" in answer.json["message"]
    assert "at least 100 are needed" in answer.json["message"]
    nobody = client.post("/v1/sites/site-z/thresholds", json={"min_examples": 1}, headers=admin(cloud))
    assert nobody.status_code == 400 and "has 0 labelled" in nobody.json["message"]


@pytest.mark.parametrize(
    ("method", "url", "body", "status", "message"),
    [
        ("post", "/v1/sites/site-a/thresholds", {"min_examples": 0}, 400, "min_examples"),
        ("post", "/v1/sites/site-a/thresholds", {"max_loss": 0.9}, 400, "max_loss"),
        ("post", "/v1/sites/site-a/thresholds", {"what": 1}, 400, "what"),
        ("post", "/v1/sites/site-a/thresholds", [], 400, "expected object"),
        ("post", "/v1/sites/s%20a/thresholds", None, 400, "site name"),
        ("get", "/v1/sites/site-a/overlay?version=x", None, 400, "version"),
        ("get", "/v1/sites/site-a/overlay?version=0", None, 400, "version"),
        ("get", "/v1/sites/a*b/overlay", None, 400, "site name"),
    ],
)
def test_bad_input_on_the_site_routes_is_a_4xx_with_a_message(
    cloud: FullCloud, method: str, url: str, body: Any, status: int, message: str
) -> None:
    client = cloud.app.test_client()
    answer = getattr(client, method)(url, json=body, headers=admin(cloud))
    assert answer.status_code == status and message in answer.json["message"], answer.json


def test_the_site_routes_need_their_scopes(cloud: FullCloud) -> None:
    client = cloud.app.test_client()
    device = {"Authorization": f"Bearer {cloud.token('device', 'cam-01')}"}
    assert client.post("/v1/sites/site-a/thresholds", headers=device).status_code == 403
    assert client.get("/v1/sites/site-a/overlay").status_code == 401


def test_the_fit_is_the_training_rule_on_the_served_bundle(tiny_bundle: Path, fmnist: Any) -> None:
    """Fitted on the unshifted images the site's thresholds still answer at least as accurately as
    the final exit on what the device takes (the rule's promise, in-sample)."""
    bundle = load_bundle(tiny_bundle)
    x, y = fmnist.x_test[:300], fmnist.y_test[:300]
    overlay = fit_overlay(bundle, "site-b", SiteExamples(x, y), now=5.0)
    probs = run_partitions(bundle, x).probs
    answered = probs[0].max(axis=1) >= overlay.exits["device"].threshold
    assert answered.any()
    device_acc = (probs[0].argmax(1) == y)[answered].mean()
    final_acc = (probs[2].argmax(1) == y)[answered].mean()
    assert device_acc >= final_acc - 1e-9
    assert overlay.fitted_at == 5.0 and overlay.metrics["site_device_share"] == pytest.approx(answered.mean())


def test_the_cli_fits_and_downloads_the_signed_overlay(cloud: FullCloud, tmp_path: Path) -> None:
    """``edgecascade site thresholds`` against the app on a loopback port."""
    token = tmp_path / "admin.token"
    token.write_text(cloud.token("admin", "ops") + "\n")
    out = tmp_path / "site-a-overlay"
    with serving(cloud) as url:
        args = ["site", "thresholds", "site-a", "--cloud", url, "--token-file", str(token), "--out", str(out)]
        assert main([*args, "--min-examples", "20"]) == 0
        assert main(args) == 1  # the cloud's default needs 100: refused, nothing new written
    overlay = parse_overlay(
        (out / "overlay.json").read_bytes(),
        (out / "overlay.json.sig").read_bytes(),
        tmp_path / "keys" / "cloud-signing.pub",
    )
    assert (
        overlay.site == "site-a" and json.loads((out / "overlay.json").read_text())["examples"] == SITE_IMAGES
    )


def test_audited_examples_reads_whole_reasons_only(cloud: FullCloud) -> None:
    learning = cloud.app.extensions["edgecascade.learning"]
    got = audited_examples(learning.store, "site-a", (28, 28, 1), 10)
    assert len(got) == SITE_IMAGES and got.x.shape == (SITE_IMAGES, 28, 28, 1) and got.skipped == 0


def test_a_site_gets_back_the_examples_a_person_labelled_for_it_only(
    cloud: FullCloud, tiny_bundle: Path, fmnist: Any
) -> None:
    client = cloud.app.test_client()
    unlabelled = audited(tiny_bundle, fmnist.x_test[300:305])  # uploaded, never labelled by a person
    gateway = {"Authorization": f"Bearer {cloud.token('gateway', 'site-a')}"}
    assert client.post("/v1/hard-examples", json={"examples": unlabelled}, headers=gateway).status_code == 200

    answer = client.get("/v1/sites/site-a/examples.npz", headers=gateway)  # the site's own token
    assert answer.status_code == 200 and answer.mimetype == "application/octet-stream"
    with np.load(io.BytesIO(answer.data), allow_pickle=False) as npz:
        x, y, ids, classes = npz["x"], npz["y"], list(npz["ids"]), list(npz["classes"])
    assert x.shape == (SITE_IMAGES + 10, 28, 28, 1) and x.dtype == np.uint8
    assert classes == list(load_bundle(tiny_bundle).manifest.classes)
    images = np.concatenate([shifted(fmnist.x_test[:SITE_IMAGES]), shifted(fmnist.x_test[200:210])])
    labels = np.concatenate([fmnist.y_test[:SITE_IMAGES], fmnist.y_test[200:210]])

    def pairs(xs: np.ndarray, ys: np.ndarray) -> list[tuple[bytes, int]]:
        return sorted(
            (image.reshape(28, 28).tobytes(), int(label)) for image, label in zip(xs, ys, strict=True)
        )

    assert pairs(x, y) == pairs(images, labels)  # each raw input with its person's label
    assert {r["id"] for r in unlabelled}.isdisjoint(ids)  # teacher labels are not a person's

    limited = client.get("/v1/sites/site-a/examples.npz?limit=5", headers=admin(cloud))
    with np.load(io.BytesIO(limited.data), allow_pickle=False) as npz:
        assert len(npz["y"]) == 5 and set(npz["ids"]) <= set(ids)
    nobody = client.get("/v1/sites/site-z/examples.npz", headers=admin(cloud))
    with np.load(io.BytesIO(nobody.data), allow_pickle=False) as npz:
        assert npz["x"].shape == (0, 28, 28, 1) and len(npz["y"]) == 0


@pytest.mark.parametrize(
    ("scope", "name", "url", "status"),
    [
        ("gateway", "site-b", "/v1/sites/site-a/examples.npz", 403),  # another site's inputs
        ("device", "cam-01", "/v1/sites/site-a/examples.npz", 403),
        ("admin", "ops", "/v1/sites/site-a/examples.npz?limit=0", 400),
        ("admin", "ops", "/v1/sites/site-a/examples.npz?limit=x", 400),
        ("admin", "ops", "/v1/sites/a*b/examples.npz", 400),
    ],
)
def test_the_examples_of_a_site_are_refused_to_others_and_on_bad_queries(
    cloud: FullCloud, scope: str, name: str, url: str, status: int
) -> None:
    client = cloud.app.test_client()
    answer = client.get(url, headers={"Authorization": f"Bearer {cloud.token(scope, name)}"})
    assert answer.status_code == status and answer.json["message"], answer.json


def test_the_cli_downloads_a_sites_examples_for_its_supernode(cloud: FullCloud, tmp_path: Path) -> None:
    """``edgecascade site examples`` against the app on a loopback port, with the site's own token;
    the file is what the ClientApp reads (load_labelled_examples), private to its owner."""
    token = tmp_path / "site.token"
    token.write_text(cloud.token("gateway", "site-b") + "\n")
    out = tmp_path / "labelled.npz"
    with serving(cloud) as url:
        args = ["site", "examples", "site-b", "--cloud", url, "--token-file", str(token), "--out", str(out)]
        assert main(args) == 0
        assert main([*args[:2], "site-a", *args[3:]]) == 1  # site-b's token cannot read site-a's
    assert out.stat().st_mode & 0o777 == 0o600
    found = load_labelled_examples(out, tuple(str(i) for i in range(10)))
    assert found is not None and found[0].shape == (SITE_IMAGES, 28, 28, 1) and len(found[1]) == SITE_IMAGES
