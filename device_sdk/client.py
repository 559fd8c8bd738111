"""DeviceClient: run the device partition, exit when confident, else ask the next tier.

The device's I/O shell around the tier core (:mod:`edgecascade.device_sdk.core.tier`):
the core decides each input (exit, device cache, or ask the gateway); the client sends what
must travel, learns the answers that come back, and keeps hard examples.

The client never lets a link failure reach the application: a timeout (after one retry
at ``retry_after`` s when set, for sites of several gateways), an error reply or an
unreadable reply becomes the device's own answer flagged ``degraded``. Bad input (wrong
shape, NaN) is the application's error: :class:`~.errors.TensorSpecError`. With ``crypto`` (a
:class:`~.wire.crypto.DeviceCrypto`) requests are encrypted end to end and only replies
that decrypt under the device's keys are believed. With an ``outbox`` (a
:class:`~.learning.outbox.Outbox`), the inputs a
:class:`~.learning.selection.HardExampleSelector` marks hard are stored durably, as cut-1
features (and the raw input only with ``keep_raw``), before ``predict`` returns; an
:class:`~.learning.uploader.Uploader` sends them on.

The model can be replaced while the client serves (:meth:`DeviceClient.swap_bundle`, driven
by :meth:`DeviceClient.follow_updates`): each call resolves the model once and finishes on
it. During a rollout the device may swap before its gateway does; the gateway then answers
a request stamped with the new version with UNKNOWN_MODEL_VERSION, and the client asks
again with the model it replaced (kept for ``grace`` seconds), so the answer is neither
lost nor degraded.

A gateway's sealed refusal of a request's sequence number (a clock that was off or jumped,
a restarted gateway) moves the :class:`~.wire.sequence.SequenceCounter` and the request is
asked again, not degraded.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.cache import NeuralCache, open_cache
from edgecascade.device_sdk.core import tier
from edgecascade.device_sdk.core.drift import DriftSettings
from edgecascade.device_sdk.core.policy import ExitPolicy
from edgecascade.device_sdk.core.tier import Decision, ServesModels, TierModel, TierModels
from edgecascade.device_sdk.counters import Counters
from edgecascade.device_sdk.errors import ConfigError, RemoteError
from edgecascade.device_sdk.learning.drift_watch import DriftWatch
from edgecascade.device_sdk.learning.outbox import Outbox
from edgecascade.device_sdk.learning.records import HardExample, raw_body
from edgecascade.device_sdk.learning.selection import Answers, HardExampleSelector
from edgecascade.device_sdk.model.bundle import Bundle, load_bundle
from edgecascade.device_sdk.model.overlay import OverlayFile
from edgecascade.device_sdk.model.updater import ModelUpdater, UpdateSettings
from edgecascade.device_sdk.transport import Transport
from edgecascade.device_sdk.transport.fetch import HttpFetcher
from edgecascade.device_sdk.transport.offload import Sender, exchange
from edgecascade.device_sdk.wire import codec
from edgecascade.device_sdk.wire.crypto import DeviceCrypto
from edgecascade.device_sdk.wire.sequence import SequenceCounter

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
    unknown: bool = False  # the device exit's unknown-input rule flagged it: perhaps a class never taught

    @property
    def confidence(self) -> float:
        return float(self.probabilities.max())


class DeviceClient(ServesModels):
    """Cascaded inference from a device: local exit first, then gateway and cloud.

    ``policy`` replaces the manifest's exit rule: any :class:`~.core.policy.ExitPolicy`, or
    the one a device's ``[offload]`` settings name (``config.offload.build_policy()``). One
    that leaves its threshold to the manifest is resolved for each model version it runs on.
    ``overlay`` is the site's signed exit thresholds (``[model] overlay``,
    :class:`~.model.overlay.OverlayFile`), read again for every model version the client swaps to.
    """

    def __init__(
        self,
        bundle: Bundle,
        device_id: str,
        transport: Transport | None = None,
        *,
        policy: ExitPolicy | None = None,
        timeout: float = 2.0,
        retry_after: float | None = None,
        num_threads: int = 1,
        cache: NeuralCache | None = None,
        crypto: DeviceCrypto | None = None,
        grace: float = 300.0,
        outbox: Outbox | None = None,
        selector: HardExampleSelector | None = None,
        keep_raw: bool = False,
        overlay: OverlayFile | None = None,
        drift: DriftSettings | None = None,
    ) -> None:
        wire.Header(wire.MessageType.INFER_REQUEST, device_id, bundle.manifest.version)  # validates the id
        if crypto is not None and crypto.device_id != device_id:
            raise ConfigError(f"payload keys are for device {crypto.device_id!r}, not {device_id!r}")
        if cache is not None and cache.model_version != bundle.manifest.version:
            raise ConfigError(
                f"cache is for model version {cache.model_version}, the bundle is v{bundle.manifest.version}"
            )
        self.device_id = device_id
        self.transport = transport
        self.timeout, self.retry_after = timeout, retry_after  # None: never sent twice
        self.crypto = crypto
        self.outbox = outbox
        self.selector = selector or HardExampleSelector.default()
        self.keep_raw = keep_raw
        self.counters = Counters()
        self.drift = DriftWatch(drift or DriftSettings(), self.counters)
        self._policy = policy
        self.sequence = SequenceCounter()  # from the clock: above what gateways saw before a restart
        self._updater: ModelUpdater | None = None
        # a new model version starts with an empty cache of the same capacity (another model's
        # embeddings do not compare)
        self._cache_capacity = cache.config.capacity if cache is not None else None
        self._overlay = overlay
        self.models = TierModels(
            "device",
            bundle,
            num_threads=num_threads,
            grace=grace,
            cache=cache,
            cache_factory=self._new_cache if cache is not None else None,
            overlay=overlay.load(bundle.manifest, self.counters) if overlay is not None else None,
        )

    @classmethod
    def from_bundle(
        cls,
        path: str | Path,
        device_id: str,
        transport: Transport | None = None,
        *,
        verify_key: str | Path | None = None,
        overlay: str | Path | None = None,
        **kwargs: object,
    ) -> DeviceClient:
        """Load and verify the device partition of a bundle; with ``verify_key`` its signature too.

        ``overlay`` (``config.model.overlay``) is a site overlay file, verified with ``verify_key``.
        """
        bundle = load_bundle(path, tiers=("device",), public_key=verify_key)
        if overlay is not None:
            kwargs["overlay"] = OverlayFile(overlay, verify_key)
        return cls(bundle, device_id, transport, **kwargs)  # type: ignore[arg-type]

    # --------------------------------------------------------------- the model it serves
    @property
    def updater(self) -> ModelUpdater | None:
        """The updater :meth:`follow_updates` started, if any (its counters say what it refused)."""
        return self._updater

    def _new_cache(self, bundle: Bundle) -> NeuralCache:
        assert self._cache_capacity is not None
        return open_cache(bundle, "device", self._cache_capacity)

    def swap_bundle(self, bundle: Bundle) -> None:
        """Serve ``bundle`` from the next call on; calls in progress finish on the current model.

        The interpreter (and an empty cache) is built here, before the swap; the caller (an
        updater thread) has verified the bundle. The configured site overlay is read again: it
        applies when it was made for the new version, else the manifest's thresholds do.
        """
        overlay = self._overlay.load(bundle.manifest, self.counters) if self._overlay is not None else None
        self.models.swap(bundle, overlay)
        self.counters.add("model_swaps")

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
        model = self.models.current
        retry = self.models.previous() is not None
        results = self._predict(model, xs, max_in_flight, retry_stale=retry)
        stale = [i for i, r in enumerate(results) if r is None]
        if stale:
            previous = self.models.previous() or model
            self.counters.add("retried_previous_model", len(stale))
            again = self._predict(previous, np.asarray(xs)[stale], max_in_flight, retry_stale=False)
            for i, prediction in zip(stale, again, strict=True):
                results[i] = prediction
        self.counters.add("inputs", len(results))
        return [r for r in results if r is not None]

    @property
    def next_seq(self) -> SequenceCounter:
        """This device's sequence counter: ``client.next_seq()`` is the next number.

        Share it with a relay upload link (``sequence=client.next_seq``): the gateways keep
        one window per device, and a resync either of them is told moves it for both.
        """
        return self.sequence

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
        decisions = tier.decide(model, model.manifest.input.prepare(raw), self._policy)
        device_ms = (time.perf_counter() - started) * 1000 / len(decisions)
        results: list[Prediction | None] = [None] * len(decisions)
        pending: list[int] = []
        for i, decision in enumerate(decisions):
            if decision.answer is not None:
                results[i] = self._prediction(model, decision.answer, device_ms)
            elif self.transport is None:
                results[i] = self._prediction(model, decision.fallback(), device_ms, error="offline")
            else:
                pending.append(i)
        for start in range(0, len(pending), max_in_flight):
            window = pending[start : start + max_in_flight]
            answers = self._offload(model, [decisions[i] for i in window], device_ms, retry_stale)
            for i, prediction in zip(window, answers, strict=True):
                results[i] = prediction
        for i, decision in enumerate(decisions):
            prediction = results[i]
            if decision.unknown and prediction is not None:
                results[i] = dataclasses.replace(prediction, unknown=True)
                self.counters.add("unknown_inputs")
        drifted = self.drift.observe(model, decisions) if model.version == self.version else set()
        if self.outbox is not None:
            self._keep_hard_examples(model, raw, decisions, results, drifted)
        return results

    def _prediction(
        self,
        model: TierModel,
        result: wire.Result,
        latency_ms: float,
        *,
        bytes_sent: int = 0,
        error: str | None = None,
    ) -> Prediction:
        self.counters.add(tier.answered(result))
        return Prediction(
            label=result.label,
            probabilities=result.probabilities,
            tier=result.tier.label,
            latency_ms=latency_ms,
            bytes_sent=bytes_sent,
            bytes_upstream=result.upstream_bytes,
            degraded=result.degraded,
            model_version=model.version,
            error=error,
        )

    def _offload(
        self, model: TierModel, decisions: list[Decision], device_ms: float, retry_stale: bool
    ) -> list[Prediction | None]:
        """Send each input's cut features to the next tier; degrade on any failure.

        With ``retry_stale``, a request the gateway refused as an unknown model version gives
        None instead (the caller asks again with the previous model).
        """
        assert self.transport is not None
        link = self.transport, self.crypto, self.device_id, self.next_seq, self.timeout
        sender = Sender(*link, resync=self._resync, retry_after=self.retry_after)
        features = [_cut_features(d) for d in decisions]
        outcomes = exchange(sender, model.version, model.spec.encoding, len(model.manifest.classes), features)
        predictions: list[Prediction | None] = []
        for decision, outcome in zip(decisions, outcomes, strict=True):
            latency = device_ms + outcome.elapsed_ms
            for event in outcome.events:  # resent after a resync, retried after retry_after
                self.counters.add(event)
            if outcome.result is None:
                error = outcome.error
                stale = isinstance(error, RemoteError) and error.code == wire.ErrorCode.UNKNOWN_MODEL_VERSION
                if stale and retry_stale:
                    self.counters.add("refused_model_version")
                    predictions.append(None)
                    continue
                self.counters.add(f"offload_failed_{type(error).__name__}")
                logger.debug("offload failed: %s", error)
                answer, reason = decision.fallback(), str(error)
            else:
                tier.learn(model, decision, outcome.result)  # the next near-duplicate is answered here
                answer, reason = outcome.result, None
            predictions.append(
                self._prediction(model, answer, latency, bytes_sent=outcome.bytes_sent, error=reason)
            )
        return predictions

    def _resync(self, next_seq: int, limit: int, refused: int) -> None:
        """Continue numbering where the gateway's sealed refusal says (once for a burst of them)."""
        if self.sequence.resync(next_seq, limit, refused):
            self.counters.add("sequence_resyncs")

    def _raw(self, x: np.ndarray) -> bytes | None:
        body = raw_body(x)
        if body is None:
            self.counters.add("hard_example_raw_too_large")
        return body

    def _keep_hard_examples(
        self,
        model: TierModel,
        raw: np.ndarray,
        decisions: list[Decision],
        results: list[Prediction | None],
        drifted: set[int],
    ) -> None:
        """Store the selected inputs in the outbox (one fsync per batch) and tag their predictions;
        the ``drifted`` ones (they raised a drift alarm) are kept for the reason ``drift`` too."""
        assert self.outbox is not None
        answered = [i for i, r in enumerate(results) if r is not None]  # None: asked again later
        answers = [p for p in results if p is not None]
        if not answers:
            return
        selected = self.drift.selector(self.selector, model.version).reasons(
            Answers(
                exit_probs=np.stack([decisions[i].probs for i in answered]),
                final_probs=np.stack([p.probabilities for p in answers]),
                tiers=[p.tier for p in answers],
                degraded=np.array([p.degraded for p in answers], dtype=bool),
                unknown=np.array([p.unknown for p in answers], dtype=bool),
            )
        )
        selected = [(*r, "drift") if i in drifted else r for i, r in zip(answered, selected, strict=True)]
        chosen = [
            (i, p, reasons) for i, p, reasons in zip(answered, answers, selected, strict=True) if reasons
        ]
        now, encoding = time.time(), model.spec.encoding
        examples = [
            HardExample.answered(
                device_id=self.device_id,
                model_version=model.version,
                encoding=str(encoding),
                features=codec.encode_features(_cut_features(decisions[i]), encoding),
                reasons=reasons,
                label=p.label,
                probabilities=p.probabilities,
                tier=p.tier,
                created_at=now,
                raw=self._raw(raw[i]) if self.keep_raw else None,
            )
            for i, p, reasons in chosen
        ]
        if not examples:
            return
        kept = self.outbox.keep(examples, self.counters)
        for (i, p, _), example, ok in zip(chosen, examples, kept, strict=True):
            if ok:
                results[i] = dataclasses.replace(p, hard_example=example.example_id)


def _cut_features(decision: Decision) -> np.ndarray:
    """The cut-1 features of a device decision (the device partition always makes them)."""
    assert decision.features is not None
    return decision.features
