"""DeviceClient: run the device partition, exit when confident, else ask the next tier.

The client never lets a link failure reach the application: a timeout, an error reply or
an unreadable reply becomes the device's own answer flagged ``degraded``. Bad input from
the application itself (wrong shape, NaN) is the application's error and is raised as
:class:`~device_sdk.errors.TensorSpecError`. With ``crypto`` (a
:class:`~device_sdk.crypto.DeviceCrypto`) requests are encrypted end to end and only
replies that decrypt under the device's keys are believed. With an ``outbox`` (a
:class:`~device_sdk.outbox.Outbox`), the inputs a
:class:`~device_sdk.selection.HardExampleSelector` marks hard are stored durably, as cut-1
features (and the raw input only with ``keep_raw``), before ``predict`` returns; an
:class:`~device_sdk.uploader.Uploader` sends them on.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device_sdk import codec, wire
from device_sdk.bundle import Bundle, load_bundle
from device_sdk.cache import NeuralCache
from device_sdk.crypto import DeviceCrypto, initial_sequence
from device_sdk.errors import (
    ConfigError,
    EdgeCascadeError,
    RemoteError,
    StorageError,
    TensorSpecError,
    TransportError,
    WireError,
)
from device_sdk.hard_examples import MAX_TENSOR_BYTES, HardExample
from device_sdk.outbox import AddStatus, Outbox
from device_sdk.policy import ExitPolicy, policy_from_spec, softmax
from device_sdk.runtime import PartitionRunner
from device_sdk.selection import Answers, HardExampleSelector
from device_sdk.similarity import embed
from device_sdk.transport import Transport

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


class DeviceClient:
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
        outbox: Outbox | None = None,
        selector: HardExampleSelector | None = None,
        keep_raw: bool = False,
    ) -> None:
        wire.Header(wire.MessageType.INFER_REQUEST, device_id, bundle.manifest.version)  # validates the id
        self.bundle = bundle
        self.manifest = bundle.manifest
        self.device_id = device_id
        self.transport = transport
        self.timeout = timeout
        self._spec = self.manifest.partition("device")
        self.policy = policy or policy_from_spec(self._spec.exit)
        self._runner = PartitionRunner.from_bundle(bundle, "device", num_threads)
        self._seq = itertools.count(initial_sequence())  # above what gateways saw before a restart
        self._seq_lock = threading.Lock()
        self.counters: Counter[str] = Counter()
        self.cache = cache
        self.crypto = crypto
        self.outbox = outbox
        self.selector = selector or HardExampleSelector.default()
        self.keep_raw = keep_raw
        if crypto is not None and crypto.device_id != device_id:
            raise ConfigError(f"payload keys are for device {crypto.device_id!r}, not {device_id!r}")
        if cache is not None and cache.model_version != self.manifest.version:
            raise ConfigError(
                f"cache is for model version {cache.model_version}, the bundle is v{self.manifest.version}"
            )

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

    # ------------------------------------------------------------------------- public API
    def predict(self, x: np.ndarray) -> Prediction:
        """Answer one input (raw image, e.g. uint8 28x28 or 28x28x1)."""
        return self.predict_batch(np.asarray(x)[None])[0]

    def predict_batch(
        self, xs: np.ndarray | Sequence[np.ndarray], max_in_flight: int = 64
    ) -> list[Prediction]:
        """Answer a batch: one device pass, then up to ``max_in_flight`` requests in flight."""
        started = time.perf_counter()
        raw = np.asarray(xs)
        batch = self._prepare(raw)
        out = self._runner.run(batch)
        probs = softmax(out.logits, self._spec.exit.temperature)
        assert out.features is not None
        exits = self.policy.should_exit(probs)
        device_ms = (time.perf_counter() - started) * 1000 / len(batch)
        results: list[Prediction | None] = [None] * len(batch)
        undecided = [i for i in range(len(batch)) if not exits[i]]
        embeddings = embed(out.features[undecided]) if self.cache is not None and undecided else None
        hits = self._lookup(embeddings, device_ms) if embeddings is not None else [None] * len(undecided)
        pending: list[tuple[int, _Local]] = []
        for i in range(len(batch)):
            if exits[i]:
                results[i] = self._local(probs[i], device_ms, degraded=False, error=None)
        for k, i in enumerate(undecided):
            if hits[k] is not None:
                results[i] = hits[k]
            elif self.transport is None:
                results[i] = self._local(probs[i], device_ms, degraded=True, error="offline")
            else:
                embedding = embeddings[k] if embeddings is not None else None
                pending.append((i, _Local(probs[i], out.features[i], device_ms, embedding)))
        for start in range(0, len(pending), max_in_flight):
            window = pending[start : start + max_in_flight]
            for i, prediction in zip(
                [i for i, _ in window], self._offload([local for _, local in window]), strict=True
            ):
                results[i] = prediction
        self.counters["inputs"] += len(batch)
        answers = [r for r in results if r is not None]
        if self.outbox is not None:
            answers = self._keep_hard_examples(raw, out.features, probs, answers)
        return answers

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def __enter__(self) -> DeviceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------ internals
    def _prepare(self, xs: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        batch = np.asarray(xs)
        shape = self.manifest.input.shape
        if batch.shape[1:] != shape and (*batch.shape[1:], 1) == shape:
            batch = batch[..., None]
        if batch.ndim != len(shape) + 1 or batch.shape[1:] != shape or len(batch) == 0:
            raise TensorSpecError(f"expected inputs of shape {shape}, got a batch of shape {batch.shape}")
        x = self.manifest.input.normalise(batch)
        if not np.isfinite(x).all():
            raise TensorSpecError("input holds NaN or infinite values")
        return x

    def _local(
        self, probs: np.ndarray, latency_ms: float, *, degraded: bool, error: str | None
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
            model_version=self.manifest.version,
            error=error,
        )

    def _lookup(self, embeddings: np.ndarray, device_ms: float) -> list[Prediction | None]:
        """Answers the device cache has for these embeddings (None where it has none)."""
        assert self.cache is not None
        started = time.perf_counter()
        hits = self.cache.lookup_batch(embeddings)
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
                    model_version=self.manifest.version,
                )
            )
        return answers

    def next_seq(self) -> int:
        """The next sequence number of this device's messages (share it with a relay upload link)."""
        with self._seq_lock:
            return next(self._seq)

    def _keep_hard_examples(
        self, raw: np.ndarray, features: np.ndarray, exit_probs: np.ndarray, answers: list[Prediction]
    ) -> list[Prediction]:
        """Store the selected inputs in the outbox (one fsync per batch); tag their predictions."""
        assert self.outbox is not None
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
        for i, reasons in enumerate(selected):
            if reasons:
                examples[i] = HardExample(
                    device_id=self.device_id,
                    model_version=self.manifest.version,
                    cut="cut1",
                    encoding=str(self._spec.encoding),
                    features=codec.encode_features(features[i], self._spec.encoding),
                    reasons=reasons,
                    predicted=answers[i].label,
                    confidence=min(1.0, max(0.0, answers[i].confidence)),
                    tier=answers[i].tier,
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

    def _offload(self, locals_: list[_Local]) -> list[Prediction]:
        """Send each input's cut features to the next tier; degrade on any failure."""
        assert self.transport is not None
        sent: list[tuple[wire.Header, int, float, Future[bytes] | EdgeCascadeError]] = []
        for local in locals_:
            header = wire.Header(
                wire.MessageType.INFER_REQUEST, self.device_id, self.manifest.version, self.next_seq()
            )
            envelope = wire.Envelope(header, codec.encode_features(local.features, self._spec.encoding))
            request = (
                self.crypto.seal(envelope) if self.crypto is not None else wire.envelope_to_bytes(envelope)
            )
            submitted = time.perf_counter()
            try:
                future: Future[bytes] | EdgeCascadeError = self.transport.submit(request, header.request_id)
            except TransportError as exc:
                future = exc
            size = 0 if isinstance(future, EdgeCascadeError) else len(request)  # nothing left the device
            sent.append((header, size, submitted, future))
        predictions = []
        for local, (header, size, submitted, future) in zip(locals_, sent, strict=True):
            try:
                if isinstance(future, EdgeCascadeError):
                    raise future
                remaining = max(0.0, self.timeout - (time.perf_counter() - submitted))
                try:
                    reply = future.result(remaining)
                except FutureTimeout:
                    self.transport.forget(header.request_id)
                    raise TransportError(f"no reply within {self.timeout:.3g} s") from None
                result = self._read_reply(header, reply)
            except (TransportError, WireError) as exc:
                self.counters[f"offload_failed_{type(exc).__name__}"] += 1
                logger.debug("offload of request %s failed: %s", header.request_id.hex(), exc)
                latency = local.device_ms + (time.perf_counter() - submitted) * 1000
                predictions.append(self._degraded(local.probs, latency, size, str(exc)))
                continue
            latency = local.device_ms + (time.perf_counter() - submitted) * 1000
            self.counters[f"answered_{result.tier.label}{'_degraded' if result.degraded else ''}"] += 1
            if self.cache is not None and local.embedding is not None and not result.degraded:
                # learn from the tiers above: the next near-duplicate is answered here
                self.cache.insert(
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
                    bytes_sent=size,
                    bytes_upstream=result.upstream_bytes,
                    degraded=result.degraded,
                    model_version=self.manifest.version,
                )
            )
        return predictions

    def _degraded(self, probs: np.ndarray, latency_ms: float, size: int, error: str) -> Prediction:
        return dataclasses.replace(
            self._local(probs, latency_ms, degraded=True, error=error), bytes_sent=size
        )

    def _read_reply(self, request: wire.Header, reply: bytes) -> wire.Result:
        envelope = self.crypto.open(reply) if self.crypto is not None else wire.envelope_from_bytes(reply)
        if envelope.header.request_id != request.request_id:
            raise WireError("reply does not answer this request")
        if envelope.header.msg_type == wire.MessageType.ERROR:
            code, message = wire.decode_error(envelope.body)
            raise RemoteError(int(code), message)
        if envelope.header.msg_type != wire.MessageType.RESULT:
            raise WireError(f"unexpected reply type {envelope.header.msg_type.name}")
        result = wire.decode_result(envelope.body)
        if len(result.probabilities) != len(self.manifest.classes):
            raise WireError("reply has the wrong number of classes")
        return result
