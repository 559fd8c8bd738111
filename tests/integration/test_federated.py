"""Collaborative training with real Flower processes: a SuperLink (TLS, SuperNode authentication)
and one SuperNode per site, each running the ClientApp on the tiny model, and the ServerApp the
SuperLink starts for each submitted run, writing to a real SQLite cloud database and registry.

One run loses a site mid-round (SIGKILL of its whole process group), goes on without one
that hangs (SIGSTOP) until it comes back in a later round, refuses an impostor's updates,
never sees a SuperNode whose key was not registered, sends a site that joins between
rounds the current aggregate, and publishes, signs and promotes the result. One site also
trains on the examples labelled for it in the cloud.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgecascade.cloud_service.federation_store import FederationStore
from edgecascade.cloud_service.registry import ModelRegistry
from edgecascade.cloud_service.store import open_engine
from edgecascade.device_sdk.model.bundle import load_bundle, sign_bundle
from edgecascade.device_sdk.model.signing import generate_signing_key
from edgecascade.federation.site_data import save_site_data
from edgecascade.federation.site_keys import new_site_key
from edgecascade.tools.certs import Pki, init_pki, issue_link, issue_site
from edgecascade.tools.federated_runs import DatabaseRuns, Follower
from edgecascade.tools.federation_stack import LocalFederation

pytestmark = pytest.mark.integration

SITES = ("site-1", "site-2", "site-3", "site-4")
LABELLED = 60  # examples labelled in the cloud for site-1
TIMEOUT = 60.0  # a round's timeout: four or five ClientApps of the tiny model take ~40 s on 2 cores


class Cloud:
    """The cloud side: a signed v1 in a registry, a database, and cloud.toml files for runs."""

    def __init__(self, root: Path, tiny: Path, pki: Pki) -> None:
        self.root, self.tiny, self.pki = root, tiny, pki
        self.signing, self.verify = generate_signing_key(root / "keys")
        v1 = root / "v1"
        shutil.copytree(tiny / "bundle", v1)
        sign_bundle(v1, self.signing)
        self.registry = ModelRegistry(root / "models", self.verify, self.signing)
        self.registry.adopt(v1)
        self.store = FederationStore(open_engine(f"sqlite:///{root / 'cloud.db'}"))

    def config(self, name: str, *, rounds: int, min_gain: float, auto_promote: bool) -> Path:
        """A cloud.toml for a run (the gate needs ``min_gain`` points on the sites' held-out data)."""
        path = self.root / f"{name}.toml"
        path.write_text(
            f"""
[cloud]
bundle = "{self.root / "v1"}"
verify_key = "{self.verify}"
database_url = "sqlite:///{self.root / "cloud.db"}"
[registry]
models_dir = "{self.root / "models"}"
signing_key = "{self.signing}"
[retrain]
checkpoint = "{self.tiny / "trained"}"
auto_promote = {str(auto_promote).lower()}
replay_size = 300
val_size = 500
test_size = 500
min_holdout = 1
min_gain = {min_gain}
tolerance = 100
[federated]
rounds = {rounds}
round_timeout = {TIMEOUT}
min_sites = 2
min_fraction = 0.4
local_epochs = 3
compression = "int8"
site_keys = "{self.pki.site_keys}"
workdir = "{self.root / "runs"}"
"""
        )
        return path

    def wait_run(self, flower_run: str, timeout: float = 400.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        follower = Follower(
            DatabaseRuns(self.store), wait=lambda s: time.sleep(s) or time.monotonic() > deadline
        )
        outcome = follower.follow(flower_run, lambda line: None)
        assert outcome is not None and outcome.run is not None, (
            f"run {flower_run} did not end in {timeout:.0f} s"
        )
        return outcome.run


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, fmnist: Any) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("federation")
    pki = init_pki(root / "pki")
    issue_link(pki.root, ["127.0.0.1"])
    for i, site in enumerate((*SITES, "impostor", "site-new")):
        issue_site(pki.root, site)
        save_site_data(
            root / f"{site}.npz",
            fmnist.x_train[i * 500 : (i + 1) * 500],
            fmnist.y_train[i * 500 : (i + 1) * 500],
        )
    # the impostor's SuperNode key is registered with the SuperLink, but the key the cloud
    # trusts for the name "impostor" is another one: its updates cannot be signed right
    strangers = root / "strangers"
    own_key, _ = new_site_key(strangers, "impostor")
    intruder_key, _ = new_site_key(strangers, "intruder")  # never registered anywhere
    shutil.copy(strangers / "impostor.pub", root / "impostor-registered.pub")
    # examples the cloud's people labelled for site-1 (as 'edgecascade site examples' writes
    # them), three of them with a class its model does not have yet: left out
    labels = np.concatenate([fmnist.y_train[5000 : 5000 + LABELLED], [12, 12, 12]])
    np.savez(root / "site-1-labelled.npz", x=fmnist.x_train[5000 : 5003 + LABELLED], y=labels)
    cloud = Cloud(root / "cloud", tiny_model_dir, pki)
    with LocalFederation(root / "flower", pki) as fed:
        fed.start_link()
        for site in SITES:
            fed.register(site)
            labelled = root / f"{site}-labelled.npz" if site == "site-1" else None
            fed.start_site(site, root / f"{site}.npz", tiny_model_dir / "trained", labelled_examples=labelled)
        fed.register("site-new")
        from edgecascade.federation import deploy

        deploy.register_site(fed.home, root / "impostor-registered.pub", "impostor")
        fed.start_site("impostor", root / "impostor.npz", tiny_model_dir / "trained", key=own_key)
        fed.processes["intruder"] = fed._start(
            "intruder",
            deploy.node_command(
                deploy.NodeSettings(
                    "intruder",
                    fed.superlink,
                    pki.ca_cert,
                    intruder_key,
                    root / "site-1.npz",
                    tiny_model_dir / "trained",
                    0,
                )
            ),
        )
        yield fed, cloud, root, tiny_model_dir


def test_a_run_survives_a_killed_site_refuses_forgeries_and_ships_its_aggregate_to_a_new_site_too(
    federation: Any,
) -> None:
    fed, cloud, root, tiny = federation
    flower_run = fed.submit(cloud.config("run", rounds=3, min_gain=0, auto_promote=True))
    deadline, paused, killed = time.monotonic() + 120, False, False
    while not (paused and killed):  # in round 1, in whichever order their ClientApps start
        assert time.monotonic() < deadline, "site-3 or site-4 never started round 1"
        if not killed and fed.running_clientapp("site-3"):
            fed.kill("site-3")  # mid-round: it is training on round 1's weights
            killed = True
        if not paused and fed.running_clientapp("site-4"):
            fed.pause("site-4")  # hangs mid-round: its result comes after the round's timeout
            paused = True
        time.sleep(0.1)
    fed.start_site("site-new", root / "site-new.npz", tiny / "trained")  # joins a later round
    while not [r for r in cloud.store.runs() if r["flower_run"] == flower_run and r["rounds_done"] >= 1]:
        assert time.monotonic() < deadline + TIMEOUT, "round 1 never ended"
        time.sleep(0.5)
    fed.resume("site-4")  # back after round 1

    run = cloud.wait_run(flower_run)

    assert run["state"] == "promoted", (run["error"], run["gate"])
    assert run["rounds_done"] == 3
    first, *later = (r["tally"] for r in run["rounds"])
    assert first["state"] == "completed" and set(first["accepted"]) == {"site-1", "site-2"}
    # 400 of each site's 500 are trained on (20 % held out); site-1 adds its cloud labels
    assert first["accepted"] == {"site-1": 400 + LABELLED, "site-2": 400}
    assert len(first["late"]) == 2  # site-3, killed, and site-4, hung: their results never came ...
    assert run["rounds"][0]["seconds"] < TIMEOUT + 15  # ... and the round did not wait past its timeout
    assert (
        "signature" in first["refused"].values()
    )  # the impostor's updates: not signed by the site they name
    assert len(first["sampled"]) == 5  # site-1..4 and the impostor: the intruder never authenticated
    assert all(r["state"] == "completed" for r in later)
    for site in ("site-4", "site-new"):  # back, or new: a later round sends it the current aggregate
        joined = next(r for r in later if site in r["models_received"])
        assert joined["models_received"][site] == joined["model_sent"] != first["model_sent"]
    assert "site-3" not in str(later)
    version = run["candidate_version"]
    current = cloud.registry.current()
    assert current is not None and current.version == version == 2
    bundle = load_bundle(cloud.registry.release_dir(version), public_key=cloud.verify)  # signature checked
    assert bundle.manifest.version == 2
