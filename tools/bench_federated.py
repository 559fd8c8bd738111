"""``edgecascade bench federated``: collaborative training across eight label-skewed sites, with faults.

The workload (:mod:`edgecascade.tools.bench_federated_data`): Fashion-MNIST's training split
cut into a cloud share (20 %) and eight sites with Dirichlet(0.3) label skew, half of them
behind a camera shift; each site is measured on its own test distribution (its label mix,
its camera), and every model on the global test split too. Side by side, all from the same
cloud-only start and with the same local training recipe and number of epochs:

- **cloud-only**: the cascade trained on the cloud share alone, what every site gets today;
- **local-only**: each site fine-tunes it on its own data (``rounds x local_epochs`` epochs);
- **aggregated**: the real federation (a SuperLink, a SuperNode per site and one beside the
  cloud for its own share, TLS and SuperNode authentication, the ServerApp writing to the
  cloud database and registry) after ``rounds`` rounds;
- **centralised** (reference only): the same fine-tuning on all the data pooled in one place.

During the run two sites are killed with SIGKILL mid-round (their SuperNode and ClientApp),
one site is stopped (SIGSTOP) mid-round until that round is over (a hung site: the round
goes on without it, and it joins a later one), and a new site joins before the last round:
the model it is sent first must be the current aggregate. Accuracies are the whole model's (the last exit).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecascade.tools.bench_federated_data import (
    Site,
    Workload,
    federated_workload,
    label_skew_table,
    write_sites,
)

STALL_GRACE = 30.0  # a round that ends later than its timeout plus this has stalled
HOLDOUT_FRACTION = 0.2  # what each site keeps to measure models on (the ClientApp's default)


def log(message: str) -> None:
    print(f"[bench federated] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class FederatedOptions:
    """The benchmark's knobs; the defaults are the documented run."""

    rounds: int = 8
    local_epochs: int = 1
    cloud_epochs: int = 8
    learning_rate: float = 1e-3
    batch_size: int = 64
    strategy: str = "fedavg"
    compression: str = "int8"
    downlink: str = "float16"
    round_timeout: float = 240.0
    alpha: float = 0.3
    seed: int = 0
    kill_round: int = 2
    killed: tuple[str, ...] = ("site-3", "site-6")  # one behind the camera shift, one not
    slow_round: int = 3
    slow: str = "site-8"


def bench_model() -> Any:
    """The benchmark's cascade: the product's layout, narrower, so ten sites train at once on 2 cores."""
    from edgecascade.training.model import ModelConfig

    return ModelConfig(
        device_filters=(16, 32),
        gateway_filters=(32, 32),
        cloud_filters=(48, 48),
        cloud_dense=96,
        cut1_channels=16,
        cut2_channels=32,
        dropout=0.2,
    )


def bench_federated(
    data: Any, workdir: Path, options: FederatedOptions, progress: bool = True
) -> dict[str, Any]:
    """Run the benchmark in ``workdir``; the report (see the module docstring)."""
    from edgecascade.federation.local_training import (
        LocalTraining,
        exit_accuracies,
        set_model_weights,
        train_locally,
    )
    from edgecascade.federation.server_app import AGGREGATE, load_weights
    from edgecascade.federation.site_data import split_holdout
    from edgecascade.training.train import load_trained

    start = time.monotonic()
    workload = federated_workload(
        data.x_train, data.y_train, data.x_test, data.y_test, alpha=options.alpha, seed=options.seed
    )
    log("sites (per-class training counts, * = camera shift):\n" + label_skew_table(workload))
    cloud = _Cloud(workdir, data, workload, options)
    seconds: dict[str, float] = {}
    tic = time.monotonic()
    cloud.train_cloud_model(progress)
    seconds["cloud_training"] = time.monotonic() - tic

    def site_training(site: Site) -> tuple[np.ndarray, np.ndarray]:
        (x, y), _ = split_holdout(site.x_train, site.y_train, HOLDOUT_FRACTION, 0)
        return x, y

    recipe = LocalTraining(
        epochs=options.rounds * options.local_epochs,
        batch_size=options.batch_size,
        learning_rate=options.learning_rate,
        seed=options.seed,
    )

    def accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float:
        return round(exit_accuracies(model, x, y)[-1], 4)

    tic = time.monotonic()
    local_only: dict[str, float] = {}
    for site in workload.sites:
        model = load_trained(cloud.checkpoint)
        x, y = site_training(site)
        train_locally(model, x, y, recipe)
        local_only[site.name] = accuracy(model, site.x_test, site.y_test)
        log(f"local-only {site.name}: {local_only[site.name]:.4f} ({len(y)} examples)")
    seconds["local_only"] = time.monotonic() - tic

    tic = time.monotonic()
    pooled = [cloud.cloud_training(), *(site_training(s) for s in workload.sites)]
    centralised = load_trained(cloud.checkpoint)
    train_locally(
        centralised, np.concatenate([x for x, _ in pooled]), np.concatenate([y for _, y in pooled]), recipe
    )
    seconds["centralised"] = time.monotonic() - tic
    log(f"centralised reference trained in {seconds['centralised']:.0f} s")

    tic = time.monotonic()
    run, faults = cloud.federate(progress)
    seconds["federated"] = time.monotonic() - tic
    aggregated = load_trained(cloud.checkpoint)
    set_model_weights(aggregated, load_weights(cloud.root / "runs" / f"run-{run['id']}" / AGGREGATE))
    cloud_only = load_trained(cloud.checkpoint)

    sites: list[dict[str, Any]] = []
    for site in workload.sites:
        sites.append(
            {
                "name": site.name,
                "shifted": site.shifted,
                "train_examples": len(site.y_train),
                "cloud_only": accuracy(cloud_only, site.x_test, site.y_test),
                "local_only": local_only[site.name],
                "aggregated": accuracy(aggregated, site.x_test, site.y_test),
            }
        )
    x_test, y_test = workload.global_test
    new = workload.new_site
    report = {
        "workload": {
            "cloud_share": 0.2,
            "sites": len(workload.sites),
            "alpha": options.alpha,
            "shifted_sites": [s.name for s in workload.sites if s.shifted],
            "cloud_examples": len(workload.cloud[1]),
            "test_per_site": len(workload.sites[0].y_test),
        },
        "options": asdict(options),
        "sites": sites,
        "mean": {
            k: round(float(np.mean([s[k] for s in sites])), 4)
            for k in ("cloud_only", "local_only", "aggregated")
        },
        "worst_site": {
            k: round(float(min(s[k] for s in sites)), 4) for k in ("cloud_only", "local_only", "aggregated")
        },
        "global": {
            "cloud_only": accuracy(cloud_only, x_test, y_test),
            "aggregated": accuracy(aggregated, x_test, y_test),
            "centralised": accuracy(centralised, x_test, y_test),
        },
        **_run_numbers(run, options),
        "killed_sites": list(faults.killed),
        "slow_site": faults.slowed,
        "slow_site_back_in_round": _back_in(run, options.slow, options.slow_round),
        "new_site_accuracy": accuracy(aggregated, new.x_test, new.y_test),
        "new_site_cloud_only": accuracy(cloud_only, new.x_test, new.y_test),
        "new_site_first_model_is_aggregate": _first_model_is_aggregate(run, new.name),
        "gate": {"state": run["state"], "reason": (run.get("gate") or {}).get("reason")},
        "seconds": {
            **{k: round(v, 1) for k, v in seconds.items()},
            "total": round(time.monotonic() - start, 1),
        },
    }
    return report


def _run_numbers(run: dict[str, Any], options: FederatedOptions) -> dict[str, Any]:
    rounds = run["rounds"]
    late = [r["tally"]["late"] for r in rounds]
    bytes_per_site = [r["tally"]["bytes_per_site"] for r in rounds if r["tally"]["bytes_per_site"]]
    stalled = sum(r["seconds"] > options.round_timeout + STALL_GRACE for r in rounds)
    updates = [n for r in rounds for n in r["tally"]["bytes_in"].values()]
    return {
        "rounds_planned": run["rounds_planned"],
        "rounds_completed": sum(r["state"] == "completed" for r in rounds),
        "rounds_short": sum(r["state"] == "short" for r in rounds),
        "rounds_stalled": stalled + run["rounds_planned"] - len(rounds),
        "round_seconds": [round(r["seconds"], 1) for r in rounds],
        "accepted_per_round": [r["accepted"] for r in rounds],
        "late_per_round": [len(x) for x in late],
        "late_sites": sorted({s for x in late for s in x}),
        "bytes_per_site_round": round(float(np.mean(bytes_per_site)), 1) if bytes_per_site else 0.0,
        "update_bytes_per_site_round": round(float(np.mean(updates)), 1) if updates else 0.0,
        "model_bytes_down": rounds[0]["tally"]["bytes_out"] if rounds else 0,
    }


def _back_in(run: dict[str, Any], site: str, after: int) -> int | None:
    """The first round after ``after`` in which ``site`` had an update accepted again; None: never."""
    rounds = [r for r in run["rounds"] if r["server_round"] > after and site in r["tally"]["accepted"]]
    return rounds[0]["server_round"] if rounds else None


def _first_model_is_aggregate(run: dict[str, Any], site: str) -> bool:
    """Whether the first weights ``site`` trained from were the aggregate of the round before it joined."""
    for previous, current in zip(run["rounds"], run["rounds"][1:], strict=False):
        received = current["tally"].get("models_received", {})
        if site in received:
            return bool(received[site] == current["tally"]["model_sent"] != previous["tally"]["model_sent"])
    return False


@dataclass
class _Faults:
    """What the fault thread did: sites killed, the site slowed."""

    killed: list[str]
    slowed: str | None = None


class _Cloud:
    """The cloud's side of the benchmark: its model, its registry, and the federation it runs."""

    def __init__(self, workdir: Path, data: Any, workload: Workload, options: FederatedOptions) -> None:
        self.root, self.data, self.workload, self.options = workdir, data, workload, options
        self.checkpoint = workdir / "cloud-only" / "checkpoint"

    def cloud_training(self) -> tuple[np.ndarray, np.ndarray]:
        from edgecascade.training.train import training_split

        x, y, _, _ = training_split(self._train_config(), self._cloud_dataset())
        return x, y

    def _cloud_dataset(self) -> Any:
        from edgecascade.training.data import Dataset

        x, y = self.workload.cloud
        return Dataset(x, y, self.data.x_test, self.data.y_test, self.data.classes)

    def _train_config(self) -> Any:
        from edgecascade.training.config import TrainConfig

        return TrainConfig(
            epochs=self.options.cloud_epochs, augment=False, model=bench_model(), seed=self.options.seed
        )

    def train_cloud_model(self, progress: bool) -> None:
        """Train the cloud-only cascade on the cloud share; export, sign and register it as v1."""
        from edgecascade.device_sdk.model.bundle import sign_bundle
        from edgecascade.device_sdk.model.signing import generate_signing_key
        from edgecascade.training.export import export_bundle
        from edgecascade.training.train import train

        log(f"training the cloud-only model on {len(self.workload.cloud[1])} images")
        trained = train(self._train_config(), self._cloud_dataset(), progress=progress)
        trained.save(self.checkpoint)
        self.signing, self.verify = generate_signing_key(self.root / "keys")
        export_bundle(trained, self.root / "cloud-only" / "bundle", name="fashion-mnist-federated", version=1)
        sign_bundle(self.root / "cloud-only" / "bundle", self.signing)
        x, y = self.workload.cloud
        np.savez(
            self.root / "cloud-data.npz",
            x=x,
            y=y,
            x_test=self.data.x_test,
            y_test=self.data.y_test,
            classes=np.array(self.data.classes),
        )

    def config(self) -> Path:
        o, root = self.options, self.root
        path = root / "cloud.toml"
        path.write_text(
            f"""[cloud]
bundle = "{root / "cloud-only" / "bundle"}"
verify_key = "{self.verify}"
database_url = "sqlite:///{root / "cloud.db"}"
[registry]
models_dir = "{root / "models"}"
signing_key = "{self.signing}"
[retrain]
checkpoint = "{self.checkpoint}"
data = "{root / "cloud-data.npz"}"
auto_promote = true
[federated]
strategy = "{o.strategy}"
rounds = {o.rounds}
round_timeout = {o.round_timeout}
min_sites = 3
min_fraction = 0.5
local_epochs = {o.local_epochs}
batch_size = {o.batch_size}
learning_rate = {o.learning_rate}
compression = "{o.compression}"
downlink = "{o.downlink}"
site_keys = "{root / "pki" / "federation" / "sites"}"
workdir = "{root / "runs"}"
"""
        )
        return path

    def federate(self, progress: bool) -> tuple[dict[str, Any], _Faults]:
        """Run the federation with its faults; the run as the cloud database recorded it."""
        from edgecascade.cloud_service.federation_store import FederationStore
        from edgecascade.cloud_service.registry import ModelRegistry
        from edgecascade.cloud_service.store import open_engine
        from edgecascade.federation.site_data import save_site_data
        from edgecascade.tools.certs import init_pki, issue_link, issue_site
        from edgecascade.tools.federation_stack import LocalFederation

        ModelRegistry(self.root / "models", self.verify, self.signing).adopt(
            self.root / "cloud-only" / "bundle"
        )
        pki = init_pki(self.root / "pki")
        issue_link(pki.root, ["127.0.0.1"])
        data_files = write_sites(self.workload, self.root / "sites")
        cloud_x, cloud_y = self.cloud_training()
        data_files["cloud"] = save_site_data(self.root / "sites" / "cloud.npz", cloud_x, cloud_y)
        names = ["cloud", *(s.name for s in self.workload.sites), self.workload.new_site.name]
        for name in names:
            issue_site(pki.root, name)
        store = FederationStore(open_engine(f"sqlite:///{self.root / 'cloud.db'}"))
        faults = _Faults(killed=[])
        with LocalFederation(self.root / "flower", pki) as fed:
            fed.start_link()
            for name in names:
                fed.register(name)
            for name in names[:-1]:
                fed.start_site(name, data_files[name], self.checkpoint, holdout_fraction=HOLDOUT_FRACTION)
            log(f"{len(names) - 1} SuperNodes up (the cloud's own share is one); submitting the run")
            flower_run = fed.submit(self.config())
            done = threading.Event()
            injector = threading.Thread(
                target=self._inject, args=(fed, store, flower_run, faults, data_files, done), daemon=True
            )
            injector.start()
            run = _follow(store, flower_run, log if progress else lambda _: None)
            done.set()
            injector.join(timeout=5)
        return run, faults

    def _inject(
        self,
        fed: Any,
        store: Any,
        flower_run: str,
        faults: _Faults,
        data_files: dict[str, Path],
        done: threading.Event,
    ) -> None:
        """Kill two sites mid-round, stall one, bring a new site in before the last round."""
        o = self.options
        try:
            self._wait_round(store, flower_run, o.kill_round, done)
            _wait(lambda: all(fed.running_clientapp(s) for s in o.killed), done)
            for site in o.killed:
                fed.kill(site)
                faults.killed.append(site)
                log(f"killed {site} (SIGKILL, SuperNode and ClientApp) in round {o.kill_round}")
            self._wait_round(store, flower_run, o.slow_round, done)
            _wait(lambda: fed.running_clientapp(o.slow), done)
            fed.pause(o.slow)
            faults.slowed = o.slow
            log(f"stopped {o.slow} (SIGSTOP) mid-round {o.slow_round}")
            self._wait_round(store, flower_run, o.slow_round + 1, done)
            fed.resume(o.slow)
            log(f"{o.slow} resumed (SIGCONT) after round {o.slow_round}")
            self._wait_round(store, flower_run, o.rounds - 1, done)
            new = self.workload.new_site.name
            fed.start_site(new, data_files[new], self.checkpoint, holdout_fraction=HOLDOUT_FRACTION)
            log(f"{new} joined during round {o.rounds - 1}")
        except _Over:
            return

    def _wait_round(self, store: Any, flower_run: str, server_round: int, done: threading.Event) -> None:
        """Until round ``server_round`` has begun (the rounds before it are recorded)."""

        def started() -> bool:
            runs = [r for r in store.runs() if r["flower_run"] == flower_run]
            return bool(runs) and runs[0]["rounds_done"] >= server_round - 1 and "round" in runs[0]["stage"]

        _wait(started, done)


class _Over(Exception):
    """The run ended before the fault could be injected."""


def _wait(condition: Callable[[], bool], done: threading.Event, poll: float = 0.2) -> None:
    while not condition():
        if done.wait(poll):
            raise _Over


def _follow(
    store: Any, flower_run: str, say: Callable[[str], None], timeout: float = 3600.0
) -> dict[str, Any]:
    """Wait for the run to end, saying each change (``federated start --wait``'s follower); the run."""
    from edgecascade.tools.federated_runs import DatabaseRuns, Follower

    deadline = time.monotonic() + timeout

    def wait(seconds: float) -> bool:
        time.sleep(seconds)
        return time.monotonic() > deadline

    outcome = Follower(DatabaseRuns(store), wait=wait).follow(flower_run, say)
    if outcome is None or outcome.run is None:
        raise TimeoutError(f"the federated run did not end in {timeout:.0f} s")
    return outcome.run


def format_federated_report(report: dict[str, Any]) -> str:
    """The short table: per site and global accuracies, then the run's numbers."""
    lines = ["site        shift  cloud-only  local-only  aggregated"]
    for s in report["sites"]:
        lines.append(
            f"{s['name']:<11} {'yes' if s['shifted'] else 'no':<5}  {s['cloud_only']:>10.4f}  "
            f"{s['local_only']:>10.4f}  {s['aggregated']:>10.4f}"
        )
    for key in ("mean", "worst_site"):
        m = report[key]
        lines.append(
            f"{key:<17}  {m['cloud_only']:>10.4f}  {m['local_only']:>10.4f}  {m['aggregated']:>10.4f}"
        )
    g = report["global"]
    lines.append(
        f"global test: cloud-only {g['cloud_only']:.4f}, aggregated {g['aggregated']:.4f}, "
        f"centralised {g['centralised']:.4f}"
    )
    lines.append(
        f"rounds: {report['rounds_completed']} completed, {report['rounds_short']} short, "
        f"{report['rounds_stalled']} stalled; seconds {report['round_seconds']}; "
        f"late {report['late_per_round']}"
    )
    lines.append(
        f"bytes per site per round {report['bytes_per_site_round']:.0f}: the update "
        f"{report['update_bytes_per_site_round']:.0f} up, "
        f"the {report['options']['downlink']} model {report['model_bytes_down']} down; "
        f"killed {report['killed_sites']}, "
        f"hung {report['slow_site']} (back in round {report['slow_site_back_in_round']})"
    )
    lines.append(
        f"new site: first model is the aggregate: {report['new_site_first_model_is_aggregate']}; "
        f"accuracy {report['new_site_accuracy']:.4f} (cloud-only {report['new_site_cloud_only']:.4f})"
    )
    lines.append(f"gate: {report['gate']['state']}: {report['gate']['reason']}")
    return "\n".join(lines)
