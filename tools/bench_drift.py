"""``edgecascade bench drift``: a new site's shifted images, through the whole learning loop, live.

The shift: Fashion-MNIST test images seen by a washed-out camera, pixel ``p`` becoming
``clip(0.5 * p + 60)`` (half the contrast, a brightness offset of 60 grey levels). It is
cheap, deterministic and plausible (a cheap sensor under strong ambient light), and it
hurts where the cascade is weakest: measured on the default model (2,000 test images) the
cascade's accuracy falls from 92 % to 43 % and the device's share from 93 % to 74 %, with
the device exit's mean confidence down from 0.91 to 0.74. (A 0.5 contrast alone costs only
5 points; the offset is what moves the images off the training distribution.)

One run, on the local stack (:class:`edgecascade.tools.stack.LocalStack`: TLS Mosquitto, the cloud with
its model registry, retraining and ``retrain.auto_promote``, the gateway following
announcements), with one :class:`~edgecascade.device_sdk.client.DeviceClient` that keeps hard examples
(raw input included) in an outbox and uploads them through the gateway relay. Besides the
hard-example filters the device keeps an audit sample (``audit_rate`` of all inputs, at
random): before retraining the device exit is confidently wrong on most shifted inputs, which
no filter selects, and the audited ones are also the unbiased sample the job fits the new
thresholds on.

1. **before**: part A of the shifted stream, one batch at a time;
2. the hard examples are uploaded (the device outbox drained, then the cloud polled until
   every selected id arrived; ids still missing are ``hard_examples_lost``) and labelled
   with their true class through ``PUT /v1/hard-examples/<id>/label``, standing for an
   operator labelling them (teacher labels from the current model could not teach its
   final exit anything new);
3. one retraining job (``POST /v1/retrain``); its candidate passes the gate or not;
4. auto-promotion and rollout: ``rollout_seconds`` runs from the trigger until the cloud,
   the gateway and the device all serve the new version;
5. **after**: a fresh part B of the shifted stream;
6. **after, site thresholds**: the cloud fits the site's own exit thresholds on its labelled
   audited examples (``POST /v1/sites/<site>/thresholds``; the site is the gateway, whose
   token uploaded them), the device loads the signed overlay and part B runs again. The
   gateway keeps its manifest's threshold live (it reads an overlay at start and on a swap);
   the offline numbers apply both of the overlay's exits. Sites that do not use the overlay
   keep the global manifest, so the original test set's accuracy is the global manifest's.

Accuracy and the device share on the shifted stream are measured live; on the original
test set the cascade of the old and new bundles is run offline
(:func:`edgecascade.device_sdk.core.chain.run_partitions`) with each manifest's thresholds.

The calls to the cloud's admin routes are in :mod:`.bench_drift_cloud`, the report's numbers
and table in :mod:`.bench_drift_report`; this module runs the flow.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecascade.device_sdk.client import DeviceClient, Prediction
from edgecascade.device_sdk.core.policy import NeverExit
from edgecascade.device_sdk.errors import EdgeCascadeError
from edgecascade.device_sdk.learning.links import RelayUploadLink
from edgecascade.device_sdk.learning.outbox import Outbox
from edgecascade.device_sdk.learning.selection import AuditSample, HardExampleSelector
from edgecascade.device_sdk.learning.uploader import Uploader
from edgecascade.device_sdk.model.bundle import load_bundle, sign_bundle
from edgecascade.device_sdk.model.overlay import SiteOverlay, load_overlay
from edgecascade.device_sdk.model.updater import UpdateSettings
from edgecascade.device_sdk.transport import MqttTransport
from edgecascade.tools.bench_drift_cloud import DriftAdmin
from edgecascade.tools.bench_drift_report import format_drift_report, offline_cascade, phase_summary
from edgecascade.tools.site_cli import save_overlay_answer
from edgecascade.tools.stack import LocalStack

__all__ = ["DriftOptions", "bench_drift", "format_drift_report", "shift"]

DEVICE_ID = "drift-site-device-01"
SITE = "gateway"  # the name of the stack gateway's token, which uploads the site's hard examples
CONTRAST, OFFSET = 0.5, 60.0


def shift(images: np.ndarray, contrast: float = CONTRAST, offset: float = OFFSET) -> np.ndarray:
    """The new site's view of ``images`` (uint8): contrast scaled, brightness offset, clipped."""
    return np.clip(images.astype(np.float32) * contrast + offset, 0, 255).round().astype(np.uint8)


@dataclass(frozen=True)
class DriftOptions:
    """Stream sizes, the retraining job's settings and how long to wait for each step."""

    before: int = 2000  # part A of the shifted stream
    after: int = 2000  # part B (fresh images)
    original: int = 10000  # original test images for the offline comparison
    epochs: int = 5
    replay_size: int = 12000  # enough replay that learning the shift costs little on the original data
    test_size: int = 5000  # original test images the gate compares on
    val_size: int = 3000
    min_holdout: int = 20
    min_gain: float = 0.5
    tolerance: float = 1.0  # points any exit may lose on the original test split (the gate)
    hard_weight: float = 2.0
    audit_rate: float = 0.1  # share of all inputs the device keeps at random (the audit sample)
    batch: int = 16  # images per predict_batch call
    site_min_examples: int = 100  # labelled audited examples the site's threshold fit needs
    timeout: float = 1200.0  # for the job; uploads and rollout wait at most 120 s
    progress: bool = True


def log(message: str) -> None:
    print(f"[bench drift] {message}", file=sys.stderr, flush=True)


def _stream(client: DeviceClient, x: np.ndarray, batch: int, desc: str, progress: bool) -> list[Prediction]:
    from tqdm import tqdm

    out: list[Prediction] = []
    with tqdm(total=len(x), desc=desc, unit="img", disable=not progress, file=sys.stderr) as bar:
        for start in range(0, len(x), batch):
            out.extend(client.predict_batch(x[start : start + batch]))
            bar.update(min(batch, len(x) - start))
    return out


def _wait(condition: Any, timeout: float, what: str) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.05)
    return time.monotonic() - started


def _wait_until_served(client: DeviceClient, x: np.ndarray, timeout: float = 30.0) -> None:
    """Probe until the gateway answers; then each manifest's own exit rule again (through swaps)."""
    client.policy = NeverExit()
    try:
        _wait(lambda: not client.predict(x).degraded, timeout, "the gateway answering")
    finally:
        client.policy = None  # not the v1 rule as an override: it would outlive the swap


def _env(stack: LocalStack, checkpoint: Path, options: DriftOptions) -> dict[str, str]:
    """The cloud's registry, announcement and retraining settings."""
    work, pki = stack.workdir, stack.pki
    announcer = stack.broker.mqtt_config("cloud")
    retrain = {
        "checkpoint": checkpoint.resolve(),
        "jobs_dir": work / "jobs",
        "count_threshold": 0,
        "auto_promote": "true",
        "epochs": options.epochs,
        "replay_size": options.replay_size,
        "test_size": options.test_size,
        "val_size": options.val_size,
        "min_holdout": options.min_holdout,
        "min_gain": options.min_gain,
        "tolerance": options.tolerance,
        "hard_weight": options.hard_weight,
    }
    return {
        "EC_CLOUD__VERIFY_KEY": str(pki.cloud_signing_pub),
        "EC_CLOUD__DATABASE_URL": f"sqlite:///{work / 'cloud-state' / 'cloud.db'}",
        "EC_CLOUD__BLOB_DIR": str(work / "cloud-state" / "blobs"),
        "EC_REGISTRY__MODELS_DIR": str(work / "models"),
        "EC_REGISTRY__SIGNING_KEY": str(pki.cloud_signing_key),
        "EC_REGISTRY__ANNOUNCE": "true",
        "EC_REGISTRY__CHECK_INTERVAL": "0.2",
        "EC_MQTT__HOST": announcer.host,
        "EC_MQTT__PORT": str(announcer.port),
        "EC_MQTT__CA_FILE": str(announcer.ca_file),
        "EC_MQTT__CERT_FILE": str(announcer.cert_file),
        "EC_MQTT__KEY_FILE": str(announcer.key_file),
        **{f"EC_RETRAIN__{k.upper()}": str(v) for k, v in retrain.items()},
    }


@contextmanager
def _workdir(path: Path | None) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
    else:
        with tempfile.TemporaryDirectory(prefix="edgecascade-drift-") as tmp:
            yield Path(tmp)


def bench_drift(
    model: Path,
    checkpoint: Path,
    x_test: np.ndarray,
    y_test: np.ndarray,
    options: DriftOptions = DriftOptions(),
    workdir: Path | None = None,
) -> dict[str, Any]:
    """Run the benchmark (see the module docstring); returns the report."""
    if options.before + options.after > len(x_test):
        raise ValueError(f"before + after must be at most {len(x_test)} images")
    shifted = shift(x_test)
    a = slice(0, options.before)
    b = slice(options.before, options.before + options.after)
    x_orig, y_orig = x_test[: options.original], y_test[: options.original]
    with _workdir(workdir) as work:
        source = work / "v1"
        shutil.rmtree(source, ignore_errors=True)
        shutil.copytree(model, source)
        stack = LocalStack(source, work / "stack")
        sign_bundle(source, stack.pki.cloud_signing_key)  # the registry only serves signed bundles
        gateway_env = {
            "EC_GATEWAY__VERIFY_KEY": str(stack.pki.cloud_signing_pub),
            "EC_UPDATE__ENABLED": "true",
            "EC_UPDATE__DIR": str(work / "gateway-models"),
            "EC_UPDATE__RETRY_INITIAL": "0.2",
            "EC_UPDATE__RETRY_MAX": "2",
            "EC_OUTBOX__PATH": str(work / "gateway-outbox.db"),
            "EC_OUTBOX__UPLOAD_INTERVAL": "0.5",
            "EC_CACHE__ENABLED": "false",
        }
        stack.gateway_env = gateway_env
        stack.cloud_env = _env(stack, checkpoint, options)
        log(f"starting the stack in {work}")
        stack.start()
        try:
            report = _run(stack, source, work, shifted, y_test, a, b, options)
        finally:
            exit_codes = stack.stop()
        log("offline cascade on the original test set, old and new bundles")
        old = load_bundle(source)
        new_dir = work / "stack" / "models" / f"v{report['after']['version']}"
        new = load_bundle(new_dir) if new_dir.is_dir() else old
        report["before"]["original"] = offline_cascade(old, x_orig, y_orig)
        report["after"]["original"] = offline_cascade(new, x_orig, y_orig)
        report["before"]["shifted"]["offline"] = offline_cascade(old, shifted[a], y_test[a])
        report["after"]["shifted"]["offline"] = offline_cascade(new, shifted[b], y_test[b])
        site = report.get("after_site_thresholds")
        if site is not None:
            overlay = SiteOverlay.from_dict(site["overlay"])
            site["shifted"]["offline"] = offline_cascade(new, shifted[b], y_test[b], overlay)
            site["original"] = report["after"]["original"]  # other sites keep the global manifest
            site["original_if_applied"] = offline_cascade(new, x_orig, y_orig, overlay)
        report["exit_codes"] = exit_codes
    return report


def _run(
    stack: LocalStack,
    source: Path,
    work: Path,
    shifted: np.ndarray,
    y: np.ndarray,
    a: slice,
    b: slice,
    options: DriftOptions,
) -> dict[str, Any]:
    tokens = stack.tokens
    admin = DriftAdmin(stack.cloud_url, tokens.create("admin", "drift-bench")[0], stack.pki.ca_cert)
    mqtt, crypto = stack.device(DEVICE_ID)
    transport = MqttTransport(mqtt, DEVICE_ID)
    bundle = load_bundle(source)
    outbox = Outbox(work / "device-outbox.db")
    selector = HardExampleSelector(
        [*HardExampleSelector.default().filters, AuditSample(options.audit_rate, np.random.default_rng(0))]
    )
    client = DeviceClient(
        bundle, DEVICE_ID, transport, crypto=crypto, outbox=outbox, selector=selector, keep_raw=True
    )
    uploader: Uploader | None = None
    try:
        client.follow_updates(
            UpdateSettings(
                enabled=True,
                dir=work / "device-models",
                retry_initial=0.2,
                retry_max=2.0,
                ca_file=stack.pki.ca_cert,
            ),
            cloud_url=stack.cloud_url,
            token=tokens.create("device", DEVICE_ID)[0],
            verify_key=stack.pki.cloud_signing_pub,
        )
        link = RelayUploadLink(
            transport, DEVICE_ID, bundle.manifest.version, crypto=crypto, sequence=client.next_seq
        )
        uploader = Uploader(outbox, link, interval=0.5, backoff_base=0.5, backoff_max=5.0).start()
        _wait_until_served(client, shifted[a][0])
        v1 = client.manifest.version

        log(f"phase before: {options.before} shifted images on v{v1}")
        before = _stream(client, shifted[a], options.batch, "before", options.progress)
        selected = {
            p.hard_example: int(label) for p, label in zip(before, y[a], strict=True) if p.hard_example
        }
        log(f"{len(selected)} hard examples selected; uploading through the gateway relay")
        uploader.drain(120.0)
        arrived: set[str] = set()

        def all_arrived() -> bool:
            arrived.update(admin.example_ids(DEVICE_ID))
            return set(selected) <= arrived

        try:
            upload_seconds = _wait(all_arrived, 120.0, "hard examples reaching the cloud")
        except TimeoutError as exc:
            log(str(exc))
            upload_seconds = None
        lost = sorted(set(selected) - arrived)
        log(f"{len(selected) - len(lost)} at the cloud, {len(lost)} lost; labelling them (operator stand-in)")
        for example_id, label in selected.items():
            if example_id in arrived:
                admin.label(example_id, label)

        trigger = time.monotonic()
        job = admin.retrain()
        log(f"retraining job {job['id']} started")
        last = ""
        while job["state"] in ("queued", "running"):
            if time.monotonic() - trigger > options.timeout:
                raise TimeoutError(f"retraining job {job['id']} did not end within {options.timeout:.0f} s")
            time.sleep(1.0)
            job = admin.job(job["id"])
            if job["stage"] != last:
                last = job["stage"]
                log(f"job {job['id']}: {100 * job['progress']:3.0f}% {last}")
        job_seconds = time.monotonic() - trigger
        gate = (job.get("metrics") or {}).get("gate", {})
        log(f"job {job['id']} {job['state']} in {job_seconds:.0f} s: {gate.get('reason', job.get('error'))}")
        version = job.get("candidate_version")
        rollout_seconds = None
        if job["state"] == "succeeded" and version is not None:

            def everyone_serves() -> bool:
                return (
                    admin.served_version() == version
                    and f"gateway now serves model v{version}" in stack.log("gateway")
                    and client.manifest.version == version
                )

            _wait(everyone_serves, 120.0, f"cloud, gateway and device serving v{version}")
            rollout_seconds = time.monotonic() - trigger
            log(f"v{version} served everywhere {rollout_seconds:.1f} s after the trigger")
        uploader.stop()
        uploader = None

        log(f"phase after: {options.after} fresh shifted images on v{client.manifest.version}")
        after = _stream(client, shifted[b], options.batch, "after", options.progress)
        site, site_error = _site_thresholds(client, admin, stack, work, shifted[b], y[b], options)
    finally:
        if uploader is not None:
            uploader.stop()
        client.close()
        outbox.close()
        admin.close()
    return {
        "shift": {"contrast": CONTRAST, "offset": OFFSET},
        "before": {"version": v1, "shifted": phase_summary(before, y[a])},
        "after": {"version": client.manifest.version, "shifted": phase_summary(after, y[b])},
        "hard_examples_selected": len(selected),
        "hard_examples_uploaded": len(selected) - len(lost),
        "hard_examples_lost": len(lost),
        "upload_seconds": upload_seconds,
        "job": {
            "id": job["id"],
            "state": job["state"],
            "seconds": job_seconds,
            "candidate_version": version,
            "examples": (job.get("metrics") or {}).get("examples"),
            "gate": gate,
        },
        "rollout_seconds": rollout_seconds,
        **({"after_site_thresholds": site} if site is not None else {"site_thresholds_error": site_error}),
        "promotion_seconds": None if rollout_seconds is None else rollout_seconds - job_seconds,
        "options": {k: v for k, v in vars(options).items() if k != "progress"},
    }


def _site_thresholds(
    client: DeviceClient,
    admin: DriftAdmin,
    stack: LocalStack,
    work: Path,
    x: np.ndarray,
    y: np.ndarray,
    options: DriftOptions,
) -> tuple[dict[str, Any] | None, str | None]:
    """Fit the site's overlay in the cloud, load it on the device, stream part B again with it."""
    log(f"fitting site {SITE!r}'s exit thresholds on its audited examples")
    started = time.monotonic()
    try:
        answer = admin.site_thresholds(SITE, options.site_min_examples)
        path = save_overlay_answer(answer, work / "site-overlay")
        client.use_overlay(load_overlay(path, stack.pki.cloud_signing_pub, client.manifest))
    except EdgeCascadeError as exc:
        log(f"no site thresholds: {exc}")
        return None, str(exc)
    fit_seconds = time.monotonic() - started
    overlay = answer["overlay"]
    log(f"site overlay for v{overlay['version']}: {overlay['exits']} ({overlay['examples']} examples)")
    log(f"phase after, site thresholds: the same {len(x)} shifted images again")
    again = _stream(client, x, options.batch, "site", options.progress)
    return {"shifted": phase_summary(again, y), "overlay": overlay, "fit_seconds": fit_seconds}, None
