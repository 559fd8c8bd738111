"""DeviceClient: run the device partition, exit when confident, else ask the next tier.

The client never lets a link failure reach the application: a timeout, an error reply or
an unreadable reply becomes the device's own answer flagged ``degraded``. Bad input from
the application itself (wrong shape, NaN) is the application's error and is raised as
:class:`~edgecascade.device_sdk.errors.TensorSpecError`. With ``crypto`` (a
:class:`~edgecascade.device_sdk.wire.crypto.DeviceCrypto`) requests are encrypted end to end and only
replies that decrypt under the device's keys are believed. With an ``outbox`` (a
:class:`~edgecascade.device_sdk.learning.outbox.Outbox`), the inputs a
:class:`~.learning.selection.HardExampleSelector` marks hard are stored durably, as cut-1
features (and the raw input only with ``keep_raw``), before ``predict`` returns; an
:class:`~edgecascade.device_sdk.learning.uploader.Uploader` sends them on.

The model can be replaced while the client serves (:meth:`DeviceClient.swap_bundle`, driven
by :meth:`DeviceClient.follow_updates`): each call resolves the model once and finishes on
it. During a rollout the device may swap before its gateway does; the gateway then answers
a request stamped with the new version with UNKNOWN_MODEL_VERSION, and the client asks
again with the model it replaced (kept for ``grace`` seconds), so the answer is neither
lost nor degraded.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.cache import NeuralCache, open_cache
from edgecascade.device_sdk.core.policy import ExitPolicy, policy_from_spec, softmax
from edgecascade.device_sdk.core.tier import ServesModels, TierModel
from edgecascade.device_sdk.errors import ConfigError, RemoteError, StorageError, TensorSpecError
from edgecascade.device_sdk.learning.outbox import AddStatus, Outbox
from edgecascade.device_sdk.learning.records import MAX_TENSOR_BYTES, HardExample
from edgecascade.device_sdk.learning.selection import Answers, HardExampleSelector
from edgecascade.device_sdk.model.bundle import Bundle, Manifest, load_bundle
from edgecascade.device_sdk.model.hotswap import ServedModels
from edgecascade.device_sdk.model.runtime import PartitionRunner
from edgecascade.device_sdk.transport import Transport
from edgecascade.device_sdk.transport.offload import Sender, exchange
from edgecascade.device_sdk.wire import codec
from edgecascade.device_sdk.wire.crypto import DeviceCrypto, initial_sequence

if TYPE_CHECKING:
    from edgecascade.device_sdk.model.updater import ModelUpdater, UpdateSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    """One answer, with where it came from and what it cost."""

    label: int
    probabilities: np.ndarray
    tier: str
    latency_ms: float
    bytes_sent: int  # device -> gateway, envelope included
    bytes_upstream: int  # gateway -> cloud, caused by this input
    degraded: bool
    model_version: int
    error: str | None = None  # why the answer is degraded
    hard_example: str | None = None  # content id, when the input was kept as a hard example

    @property
    def confidence(self) -> float:
        return float(self.probabilities.max())


@dataclass
class _Local:
    """The device's own view of one input, kept until the upper tiers answer."""

    probs: np.ndarray
    features: np.ndarray
    device_ms: float  # this input's share of the device partition's time
    embedding: np.ndarray | None = None  # cache key, when the client has a cache


class DeviceClient(ServesModels):
    """Cascaded inference from a device: local exit first, then gateway and cloud."""

    def __init__(
        self,
        bundle: Bundle,
        device_id: str,
        transport: Transport | None = None,
        *,
        policy: ExitPolicy | None = None,
        timeout: float = 2.0,
        num_threads: int = 1,
        cache: NeuralCache | None = None,
        crypto: DeviceCrypto | None = None,
        grace: float = 300.0,
        outbox: Outbox | None = None,
        selector: HardExampleSelector | None = None,
        keep_raw: bool = False,
    ) -> None:
        wire.Header(wire.MessageType.INFER_REQUEST, device_id, bundle.manifest.version)  # validates the id
        self.device_id = device_id
        self.transport = transport
        self.timeout = timeout
        self.num_threads = num_threads
        self._policy = policy  # an explicit policy outlives model swaps; None: each manifest's own
        self._seq = itertools.count(initial_sequence())  # above what gateways saw before a restart
        self._seq_lock = threading.Lock()
        self.counters: Counter[str] = Counter()
        self.crypto = crypto
        self.outbox = outbox
        self.selector = selector or HardExampleSelector.default()
        self.keep_raw = keep_raw
        self._updater: ModelUpdater | None = None
        if crypto is not None and crypto.device_id != device_id:
            raise ConfigError(f"payload keys are for device {crypto.device_id!r}, not {device_id!r}")
        if cache is not None and cache.model_version != bundle.manifest.version:
            raise ConfigError(
                f"cache is for model version {cache.model_version}, the bundle is v{bundle.manifest.version}"
            )
        self._models = ServedModels(self._load(bundle, cache), grace)

    @classmethod
    def from_bundle(
        cls,
        path: str | Path,
        device_id: str,
        transport: Transport | None = None,
        *,
        verify_key: str | Path | None = None,
        **kwargs: object,
    ) -> DeviceClient:
        """Load and verify the device partition of a bundle; with ``verify_key`` its signature too."""
        bundle = load_bundle(path, tiers=("device",), public_key=verify_key)
        return cls(bundle, device_id, transport, **kwargs)  # type: ignore[arg-type]

    # --------------------------------------------------------------- the model it serves
    @property
    def manifest(self) -> Manifest:
        return self._models.current.manifest

    @property
    def cache(self) -> NeuralCache | None:
        return self._models.current.cache

    @property
    def policy(self) -> ExitPolicy:
        return self._policy or self._models.current.policy

    @policy.setter
    def policy(self, policy: ExitPolicy | None) -> None:
        self._policy = policy

    @property
    def updater(self) -> ModelUpdater | None:
        """The updater :meth:`follow_updates` started, if any (its counters say what it refused)."""
        return self._updater

    @property
    def _runner(self) -> PartitionRunner:
        return self._models.current.runner

    def _load(self, bundle: Bundle, cache: NeuralCache | None) -> TierModel:
        runner = PartitionRunner.from_bundle(bundle, "device", self.num_threads)
        return TierModel(
            "device", bundle, runner, policy_from_spec(bundle.manifest.partition("device").exit), cache
        )

    def swap_bundle(self, bundle: Bundle) -> None:
        """Serve ``bundle`` from the next call on; calls in progress finish on the current model.

        The interpreter is built here, before the swap; the caller (an updater thread) has
        verified the bundle. A device cache starts empty for the new version (embeddings of
        another model do not compare), with the same capacity.
        """
        old = self._models.current
        cache = None
        if old.cache is not None:
            cache = open_cache(bundle, "device", old.cache.config.capacity)
        self._models.swap(self._load(bundle, cache))
        self.counters["model_swaps"] += 1
        logger.info("device %s now runs model v%d", self.device_id, bundle.manifest.version)

    def follow_updates(
        self,
        settings: UpdateSettings,
        *,
        cloud_url: str,
        token: str,
        verify_key: str | Path,
    ) -> ModelUpdater:
        """Follow the cloud's model announcements through the transport and swap to each release.

        ``token`` is this device's bearer token for the cloud, ``verify_key`` the cloud's
        signing key (``cloud-signing.pub``), ``settings.dir`` a directory of this client's
        own (releases are kept there). Only the device partition is downloaded.
        """
        from edgecascade.device_sdk.model.updater import ModelUpdater
        from edgecascade.device_sdk.transport.fetch import HttpFetcher

        if self._updater is not None:
            raise ConfigError("this client already follows updates")
        if not hasattr(self.transport, "subscribe"):
            raise ConfigError("following updates needs a transport that subscribes (MqttTransport)")
        fetcher = HttpFetcher(
            cloud_url,
            token,
            timeout=settings.timeout,
            ca_file=settings.ca_file,
            max_bytes=settings.max_file_bytes,
        )
        self._updater = ModelUpdater(
            settings,
            public_key=verify_key,
            tiers=("device",),
            running=lambda: self.manifest,
            install=self.swap_bundle,
            fetcher=fetcher,
            name=self.device_id,
        )
        self._updater.start(self.transport)
        return self._updater

    # ------------------------------------------------------------------------- public API
    def predict(self, x: np.ndarray) -> Prediction:
        """Answer one input (raw image, e.g. uint8 28x28 or 28x28x1)."""
        return self.predict_batch(np.asarray(x)[None])[0]

    def predict_batch(
        self, xs: np.ndarray | Sequence[np.ndarray], max_in_flight: int = 64
    ) -> list[Prediction]:
        """Answer a batch: one device pass, then up to ``max_in_flight`` requests in flight.

        Inputs the gateway refused because it does not serve this model version yet are
        asked again with the model this client replaced, while that one is in its grace.
        """
        model = self._models.current
        retry = self._models.previous() is not None
        results = self._predict(model, xs, max_in_flight, retry_stale=retry)
        stale = [i for i, r in enumerate(results) if r is None]
        if stale:
            previous = self._models.previous() or model
            self.counters["retried_previous_model"] += len(stale)
            again = self._predict(previous, np.asarray(xs)[stale], max_in_flight, retry_stale=False)
            for i, prediction in zip(stale, again, strict=True):
                results[i] = prediction
        self.counters["inputs"] += len(results)
        return [r for r in results if r is not None]

    def close(self) -> None:
        if self._updater is not None:
            self._updater.stop()
        if self.transport is not None:
            self.transport.close()

    def __enter__(self) -> DeviceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------ internals
    def _predict(
        self,
        model: TierModel,
        xs: np.ndarray | Sequence[np.ndarray],
        max_in_flight: int,
        *,
        retry_stale: bool,
    ) -> list[Prediction | None]:
        """One pass on ``model``; None where the gateway refused the version and ``retry_stale``."""
        started = time.perf_counter()
        raw = np.asarray(xs)
        batch = self._prepare(raw, model)
        out = model.runner.run(batch)
        spec = model.spec
        probs = softmax(out.logits, spec.exit.temperature)
        assert out.features is not None
        exits = (self._policy or model.policy).should_exit(probs)
        device_ms = (time.perf_counter() - started) * 1000 / len(batch)
        results: list[Prediction | None] = [None] * len(batch)
        undecided = [i for i in range(len(batch)) if not exits[i]]
        cache = model.cache
        embeddings = cache.embed(out.features[undecided]) if cache is not None and undecided else None
        if cache is not None:
            cache.keep_exits(out.features, probs, exits, wire.Tier.DEVICE.label)
        hits = (
            self._lookup(model, embeddings, device_ms) if embeddings is not None else [None] * len(undecided)
        )
        pending: list[tuple[int, _Local]] = []
        for i in range(len(batch)):
            if exits[i]:
                results[i] = self._local(model, probs[i], device_ms, degraded=False, error=None)
        for k, i in enumerate(undecided):
            if hits[k] is not None:
                results[i] = hits[k]
            elif self.transport is None:
                results[i] = self._local(model, probs[i], device_ms, degraded=True, error="offline")
            else:
                embedding = embeddings[k] if embeddings is not None else None
                pending.append((i, _Local(probs[i], out.features[i], device_ms, embedding)))
        for start in range(0, len(pending), max_in_flight):
            window = pending[start : start + max_in_flight]
            answers = self._offload(model, [local for _, local in window], retry_stale)
            for (i, _), prediction in zip(window, answers, strict=True):
                results[i] = prediction
        if self.outbox is not None:
            answered = [i for i, r in enumerate(results) if r is not None]  # None: asked again later
            done = [r for r in results if r is not None]
            kept = self._keep_hard_examples(
                model, raw[answered], out.features[answered], probs[answered], done
            )
            for i, prediction in zip(answered, kept, strict=True):
                results[i] = prediction
        return results

    def _prepare(self, xs: np.ndarray | Sequence[np.ndarray], model: TierModel | None = None) -> np.ndarray:
        batch = np.asarray(xs)
        manifest = (model or self._models.current).manifest
        shape = manifest.input.shape
        if batch.shape[1:] != shape and (*batch.shape[1:], 1) == shape:
            batch = batch[..., None]
        if batch.ndim != len(shape) + 1 or batch.shape[1:] != shape or len(batch) == 0:
            raise TensorSpecError(f"expected inputs of shape {shape}, got a batch of shape {batch.shape}")
        x = manifest.input.normalise(batch)
        if not np.isfinite(x).all():
            raise TensorSpecError("input holds NaN or infinite values")
        return x

    def _local(
        self, model: TierModel, probs: np.ndarray, latency_ms: float, *, degraded: bool, error: str | None
    ) -> Prediction:
        tier = wire.Tier.DEVICE.label
        self.counters[f"answered_{tier}{'_degraded' if degraded else ''}"] += 1
        return Prediction(
            label=int(probs.argmax()),
            probabilities=probs,
            tier=tier,
            latency_ms=latency_ms,
            bytes_sent=0,
            bytes_upstream=0,
            degraded=degraded,
            model_version=model.version,
            error=error,
        )

    def _lookup(self, model: TierModel, embeddings: np.ndarray, device_ms: float) -> list[Prediction | None]:
        """Answers the device cache has for these embeddings (None where it has none)."""
        assert model.cache is not None
        started = time.perf_counter()
        hits = model.cache.lookup_batch(embeddings)
        lookup_ms = (time.perf_counter() - started) * 1000 / max(1, len(embeddings))
        answers: list[Prediction | None] = []
        for hit in hits:
            if hit is None:
                answers.append(None)
                continue
            self.counters["answered_device_cache"] += 1
            answers.append(
                Prediction(
                    label=hit.label,
                    probabilities=hit.probabilities,
                    tier=wire.Tier.DEVICE_CACHE.label,
                    latency_ms=device_ms + lookup_ms,
                    bytes_sent=0,
                    bytes_upstream=0,
                    degraded=False,
                    model_version=model.version,
                )
            )
        return answers

    def next_seq(self) -> int:
        """The next sequence number of this device's messages (share it with a relay upload link)."""
        with self._seq_lock:
            return next(self._seq)

    def _keep_hard_examples(
        self,
        model: TierModel,
        raw: np.ndarray,
        features: np.ndarray,
        exit_probs: np.ndarray,
        answers: list[Prediction],
    ) -> list[Prediction]:
        """Store the selected inputs in the outbox (one fsync per batch); tag their predictions."""
        assert self.outbox is not None
        if not answers:
            return answers
        selected = self.selector.reasons(
            Answers(
                exit_probs=exit_probs,
                final_probs=np.stack([p.probabilities for p in answers]),
                tiers=[p.tier for p in answers],
                degraded=np.array([p.degraded for p in answers], dtype=bool),
            )
        )
        examples: dict[int, HardExample] = {}
        now = time.time()
        encoding = model.spec.encoding
        for i, (reasons, answer) in enumerate(zip(selected, answers, strict=True)):
            if reasons:
                examples[i] = HardExample(
                    device_id=self.device_id,
                    model_version=model.version,
                    cut="cut1",
                    encoding=str(encoding),
                    features=codec.encode_features(features[i], encoding),
                    reasons=reasons,
                    predicted=answer.label,
                    confidence=min(1.0, max(0.0, answer.confidence)),
                    tier=answer.tier,
                    created_at=now,
                    raw=self._raw_body(raw[i]) if self.keep_raw else None,
                )
        if not examples:
            return answers
        try:
            statuses = self.outbox.add_many(examples.values())
        except StorageError as exc:  # the answer still goes to the application
            self.counters["hard_examples_not_stored"] += len(examples)
            logger.error("cannot store %d hard example(s): %s", len(examples), exc)
            return answers
        kept = {i for i, status in zip(examples, statuses, strict=True) if status is not AddStatus.FULL}
        self.counters["hard_examples_kept"] += len(kept)
        self.counters["hard_examples_not_stored"] += len(examples) - len(kept)
        return [
            dataclasses.replace(p, hard_example=examples[i].example_id) if i in kept else p
            for i, p in enumerate(answers)
        ]

    def _raw_body(self, x: np.ndarray) -> bytes | None:
        """The raw input as a tensor body (uint8 as given, else float32); None if too large to upload."""
        x = np.asarray(x)
        body = wire.encode_tensor(x if x.dtype == np.uint8 else x.astype(np.float32))
        if len(body) > MAX_TENSOR_BYTES:
            self.counters["hard_example_raw_too_large"] += 1
            return None
        return body

    def _offload(self, model: TierModel, locals_: list[_Local], retry_stale: bool) -> list[Prediction | None]:
        """Send each input's cut features to the next tier; degrade on any failure.

        With ``retry_stale``, a request the gateway refused as an unknown model version gives
        None instead (the caller asks again with the previous model).
        """
        assert self.transport is not None
        sender = Sender(self.transport, self.crypto, self.device_id, self.next_seq, self.timeout)
        features = [local.features for local in locals_]
        outcomes = exchange(sender, model.version, model.spec.encoding, len(model.manifest.classes), features)
        predictions: list[Prediction | None] = []
        for local, outcome in zip(locals_, outcomes, strict=True):
            latency = local.device_ms + outcome.elapsed_ms
            result, error = outcome.result, outcome.error
            if error is not None or result is None:
                stale = isinstance(error, RemoteError) and error.code == wire.ErrorCode.UNKNOWN_MODEL_VERSION
                if stale and retry_stale:
                    self.counters["refused_model_version"] += 1
                    predictions.append(None)
                    continue
                self.counters[f"offload_failed_{type(error).__name__}"] += 1
                logger.debug("offload failed: %s", error)
                degraded = self._local(model, local.probs, latency, degraded=True, error=str(error))
                predictions.append(dataclasses.replace(degraded, bytes_sent=outcome.bytes_sent))
                continue
            self.counters[f"answered_{result.tier.label}{'_degraded' if result.degraded else ''}"] += 1
            if model.cache is not None and local.embedding is not None and not result.degraded:
                # learn from the tiers above: the next near-duplicate is answered here
                model.cache.insert(
                    local.embedding,
                    result.label,
                    result.probabilities,
                    result.tier.label,
                    float(result.probabilities.max()),
                )
            predictions.append(
                Prediction(
                    label=result.label,
                    probabilities=result.probabilities,
                    tier=result.tier.label,
                    latency_ms=latency,
                    bytes_sent=outcome.bytes_sent,
                    bytes_upstream=result.upstream_bytes,
                    degraded=result.degraded,
                    model_version=model.version,
                )
            )
        return predictions
