"""The gateway daemon: MQTT in, micro-batched partition 2, cloud forwarding, MQTT out.

paho's network thread only enqueues; one worker thread drains the queue in micro-batches
through :class:`~edgecascade.edge_gateway.service.GatewayService`, and a small thread pool forwards
unconfident requests to the cloud so a slow cloud never stalls confident answers.
Replies always go to the requesting device's own response topic. With ``gateway.device_rate``
set, a device sending faster than that is refused on the network thread, before its request
is queued or decrypted (:mod:`.ratelimit`), so it cannot crowd out the others. The broker link is TLS
with the gateway's client certificate; payloads are end-to-end encrypted with each device
(:mod:`.crypto`), and unencrypted requests are refused unless the ``[crypto]``
settings say otherwise.

With ``[update] enabled`` the daemon follows the cloud's model announcements on the same
broker connection (:class:`~edgecascade.device_sdk.model.updater.ModelUpdater`): it downloads the gateway
partition of each announced release with its cloud token, verifies it, and hot-swaps it
into the service between micro-batches; at start it runs the release it last installed
when that still verifies.

With ``[outbox] path`` set, the daemon also relays devices' hard-example uploads: a second
subscription (``ec/v1/dev/+/hx``, shared like requests) feeds one relay thread that stores
each batch durably (:class:`~edgecascade.edge_gateway.relay.HardExampleRelay`) before acknowledging it,
and an :class:`~edgecascade.device_sdk.learning.uploader.Uploader` sends the outbox on to the cloud.

Every ``gateway.heartbeat_interval`` seconds a thread reports the gateway's status to the
cloud's fleet view (:mod:`.heartbeat`): model version, answers by tier, latency, the
devices it heard from and the outbox's backlog.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from types import FrameType

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.cache import NeuralCache, open_cache
from edgecascade.device_sdk.errors import ConfigError, EdgeCascadeError, RateLimitedError
from edgecascade.device_sdk.learning.outbox import Outbox
from edgecascade.device_sdk.learning.uploader import Uploader, UploadLink
from edgecascade.device_sdk.logs import LogLimiter
from edgecascade.device_sdk.model.bundle import Bundle, load_bundle
from edgecascade.device_sdk.model.overlay import OverlayFile
from edgecascade.device_sdk.model.updater import ModelUpdater, installed_bundle
from edgecascade.device_sdk.transport.fetch import HttpFetcher
from edgecascade.device_sdk.transport.mqtt import MqttLink
from edgecascade.edge_gateway.cloud_link import CloudLink, HttpCloudLink
from edgecascade.edge_gateway.config import CryptoSettings, GatewayConfig
from edgecascade.edge_gateway.crypto import GatewayCrypto, load_gateway_crypto
from edgecascade.edge_gateway.health import HealthReport, OperationsServer
from edgecascade.edge_gateway.heartbeat import GatewayStatus, heartbeat_sender
from edgecascade.edge_gateway.messages import Message, refusal
from edgecascade.edge_gateway.metrics import GatewayCollector, gateway_registry
from edgecascade.edge_gateway.presence import Presence
from edgecascade.edge_gateway.ratelimit import DeviceRateLimiter
from edgecascade.edge_gateway.relay import HardExampleRelay
from edgecascade.edge_gateway.service import Forward, GatewayService
from edgecascade.edge_gateway.share import gateway_subscriptions

logger = logging.getLogger(__name__)


def gateway_crypto(settings: CryptoSettings) -> GatewayCrypto | None:
    """The payload crypto the settings ask for; ConfigError if it is required but has no keys."""
    if settings.private_key is None or settings.device_keys is None:
        if settings.required:
            raise ConfigError(
                "crypto.private_key and crypto.device_keys are required: the gateway only serves "
                "encrypted requests (make them with 'edgecascade certs init')"
            )
        logger.warning("payload encryption is off: requests and replies cross the broker in the clear")
        return None
    return load_gateway_crypto(
        settings.private_key,
        settings.device_keys,
        gateway_name=settings.gateway_name,
        required=settings.required,
        window=settings.window,
        rescan_interval=settings.rescan_interval,
        max_ahead=settings.max_ahead,
        replay_store=settings.replay_store,
        replay_shared=settings.replay_shared,
    )


class GatewayDaemon:
    """Serves every device's requests arriving through the broker."""

    def __init__(
        self, config: GatewayConfig, service: GatewayService | None = None, cloud: CloudLink | None = None
    ) -> None:
        self.config = config
        settings = config.gateway
        hx = config.outbox
        self.outbox = Outbox(hx.path, hx.capacity) if hx.path is not None else None
        try:
            self.service = service or self._build_service(cloud)
        except BaseException:
            if self.outbox is not None:
                self.outbox.close()
            raise
        service = self.service
        self.relay: HardExampleRelay | None = None
        self.uploader: Uploader | None = None
        self._hx_queue: queue.Queue[Message | None] = queue.Queue(hx.relay_queue)
        self._relay_thread = threading.Thread(target=self._relay_work, name="gateway-relay", daemon=True)
        if self.outbox is not None:
            self.relay = HardExampleRelay(self.outbox, service.crypto, service.counters)
            upload_link = cloud or service.cloud
            if isinstance(upload_link, UploadLink):
                self.uploader = Uploader.from_settings(self.outbox, upload_link, hx, name="gateway-uploader")
            else:
                logger.warning("the cloud link cannot upload: hard examples stay in %s", hx.path)
        self.updater: ModelUpdater | None = None
        if config.update.enabled:
            assert settings.verify_key is not None  # GatewayConfig checks it
            fetcher = HttpFetcher(
                settings.cloud_url,
                settings.cloud_token,
                timeout=config.update.timeout,
                ca_file=config.update.ca_file,
                max_bytes=config.update.max_file_bytes,
            )
            self.updater = ModelUpdater(
                config.update,
                public_key=settings.verify_key,
                tiers=("gateway",),
                running=lambda: self.service.bundle.manifest,
                install=self._install,
                fetcher=fetcher,
                name=settings.gateway_id,
            )
        self._queue: queue.Queue[Message | None] = queue.Queue(settings.queue_size)
        self.rate_limiter = None  # per-device token buckets, with gateway.device_rate set
        if settings.device_rate > 0:
            self.rate_limiter = DeviceRateLimiter(settings.device_rate, settings.device_burst)
        self._pool = ThreadPoolExecutor(settings.forward_workers, thread_name_prefix="forward")
        # requests handed to the pool and not yet answered: a full backlog is answered at once,
        # degraded, rather than left to wait seconds for a cloud that cannot keep up
        self._backlog = threading.BoundedSemaphore(settings.forward_backlog)
        self._link = MqttLink(config.mqtt, config.mqtt.client_id or settings.gateway_id)
        self._worker = threading.Thread(target=self._work, name="gateway-worker", daemon=True)
        self._stopped = threading.Event()
        self.status = GatewayStatus()  # devices heard from and latencies, for the heartbeat
        self.heartbeat = heartbeat_sender(config, self.service, self.status, self.outbox)
        self._observability()

    def _build_service(self, cloud: CloudLink | None) -> GatewayService:
        config, settings = self.config, self.config.gateway
        bundle = self._initial_bundle()
        cache = None
        if config.cache.enabled:
            cache = open_cache(
                bundle, "gateway", config.cache.capacity, config.cache.path, tau=config.cache.tau
            )
        link = cloud or HttpCloudLink(
            settings.cloud_url, settings.cloud_timeout, settings.cloud_token, settings.cloud_ca
        )
        return GatewayService(
            bundle,
            link,
            policy=config.offload.build_policy(),  # [offload]; by default the manifest's rule
            cache=cache,
            crypto=gateway_crypto(config.crypto),
            grace=settings.model_grace,
            cache_factory=self._new_cache if config.cache.enabled else None,
            outbox=self.outbox if config.outbox.record_degraded else None,
            overlay=OverlayFile(config.model.overlay, settings.verify_key) if config.model.overlay else None,
        )

    def _initial_bundle(self) -> Bundle:
        """The configured bundle, or the release the updater installed since, if that verifies."""
        settings, update = self.config.gateway, self.config.update
        bundle = load_bundle(settings.bundle, tiers=("gateway",), public_key=settings.verify_key)
        if update.enabled and settings.verify_key is not None:
            installed = installed_bundle(
                update.dir, settings.verify_key, ("gateway",), bundle.manifest.version
            )
            if installed is not None:
                logger.info("starting from the installed release in %s", installed.path)
                return installed
        return bundle

    def _new_cache(self, bundle: Bundle) -> NeuralCache:
        """An empty gateway cache for a new model version (another model's embeddings do not compare)."""
        cache = self.config.cache
        return open_cache(bundle, "gateway", cache.capacity, None, tau=cache.tau)

    # ------------------------------------------------------------------- observability
    def _observability(self) -> None:
        """Status topic and last will, metrics registry, arrival times, the log limiter."""
        settings = self.config.gateway
        self.log_limiter = LogLimiter(logger)  # what outside input can repeat at will
        self.presence = Presence(self._link, settings.gateway_id, self._online)
        components = {}
        if self.outbox is not None:
            components["outbox"] = self.outbox.counters
        if self.uploader is not None:
            components["uploader"] = self.uploader.counters
        collector = GatewayCollector(settings.gateway_id, self.service, self.health, components)
        self.metrics = gateway_registry(collector)
        self._operations: OperationsServer | None = None

    def _start_operations(self) -> None:
        """Serve ``/metrics`` and ``/healthz`` (unless ``metrics.port`` is 0); a taken port only logs."""
        settings = self.config.metrics
        if settings.port == 0:
            return
        try:
            self._operations = OperationsServer(settings.host, settings.port, self.metrics, self.health)
        except OSError as exc:  # serving devices matters more than being scraped
            logger.error("no metrics endpoint on %s:%d: %s", settings.host, settings.port, exc)
            return
        self._operations.start()

    @property
    def operations_address(self) -> tuple[str, int] | None:
        """Where ``/metrics`` and ``/healthz`` are served, or None."""
        return self._operations.address if self._operations is not None else None

    def health(self) -> HealthReport:
        """The gateway's health now: ``/healthz``, and the gauges of its metrics."""
        current = self.service.models.current
        reach = getattr(self.service.cloud, "reachability", None)
        pending = None
        if self.outbox is not None:
            try:
                pending = self.outbox.counts()["pending"]
            except EdgeCascadeError:  # closed or unreadable: unknown
                pending = None
        return HealthReport(
            gateway=self.config.gateway.gateway_id,
            connected=self._link.connected,
            serving=self._worker.is_alive() and not self._stopped.is_set(),
            model=current.manifest.name,
            version=current.version,
            versions=self.service.versions(),
            cloud_reachable=reach.reachable if reach is not None else None,
            cloud_error=reach.error if reach is not None else None,
            queue_depth=self._queue.qsize(),
            queue_capacity=self._queue.maxsize,
            outbox_pending=pending,
            outbox_capacity=self.outbox.capacity if self.outbox is not None else None,
        )

    def _online(self) -> dict[str, object]:
        """The fields of the retained ``online`` status."""
        manifest, versions = self.service.manifest, list(self.service.versions())
        return {"model": manifest.name, "version": manifest.version, "versions": versions}

    def _install(self, bundle: Bundle) -> None:
        """Swap in a release the updater verified, and say so on the status topic."""
        self.service.swap(bundle)
        self.presence.announce()

    def start(self, connect_timeout: float = 10.0) -> None:
        """Connect to the broker and start serving."""
        self._worker.start()
        if self.updater is not None:
            self.updater.start(self._link)  # subscribed before connecting: the retained message arrives
        requests, uploads = gateway_subscriptions(self.config)  # a share group no device can name
        self._link.subscribe(requests, self._on_request)
        if self.relay is not None:
            self._relay_thread.start()
            self._link.subscribe(uploads, self._on_upload)
        if self.uploader is not None:
            self.uploader.start()
        self._link.connect(connect_timeout)
        self._start_operations()
        if self.heartbeat is not None:
            self.heartbeat.start()
        logger.info(
            "gateway %s serving model %s v%d via %s:%d",
            self.config.gateway.gateway_id,
            self.service.bundle.manifest.name,
            self.service.version,
            self.config.mqtt.host,
            self.config.mqtt.port,
        )

    def stop(self) -> None:
        """Stop taking requests, finish those queued and in flight, disconnect."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self.updater is not None:
            self.updater.stop()
        self._queue.put(None)
        self._worker.join(timeout=10)
        if self._relay_thread.is_alive():
            self._hx_queue.put(None)  # after the batches already queued: they are stored and acknowledged
            self._relay_thread.join(timeout=10)
        self._pool.shutdown(wait=True)
        self.presence.withdraw()  # a clean disconnect discards the last will
        self._link.close()
        if self._operations is not None:
            self._operations.stop()
        if self.heartbeat is not None:
            self.heartbeat.stop(timeout=self.config.gateway.cloud_timeout + 1)
        if self.uploader is not None:
            self.uploader.stop(timeout=self.config.gateway.cloud_timeout + 1)
        if self.outbox is not None:
            logger.info("hard-example outbox %s: %s", self.config.outbox.path, self.outbox.counts())
            self.outbox.close()
        if self.service.crypto is not None:
            self.service.crypto.close()  # the replay store
        cache = self.service.cache
        if cache is not None and self.config.cache.path is not None:
            cache.save(self.config.cache.path)
            logger.info("saved %d cache entries to %s", len(cache), self.config.cache.path)
        limiters = [self.service.log_limiter, self.log_limiter]
        if self.relay is not None:
            limiters.append(self.relay.log_limiter)
        for limiter in limiters:
            limiter.flush()  # what was suppressed since the last summary
        logger.info("gateway stopped; counters: %s", self.service.counters.snapshot())

    def run_forever(self) -> None:
        """Serve until SIGTERM or SIGINT, then stop gracefully."""

        signalled = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            logger.info("received signal %d, shutting down", signum)
            signalled.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.start()
        signalled.wait()
        self.stop()

    # ---------------------------------------------------------------- network thread side
    def _on_request(
        self, topic: str, payload: bytes, response_topic: str | None, correlation: bytes | None
    ) -> None:
        device_id = wire.device_id_from_topic(topic)
        if device_id is None:
            self.service.counters.add("rejected_bad_topic")
            return
        if response_topic is not None and response_topic != wire.response_topic(device_id):
            self.service.counters.add("rejected_foreign_response_topic")
            self.log_limiter.log(
                logging.WARNING,
                ("foreign_response_topic", device_id),
                "device %s asked for replies on a foreign topic %s",
                device_id,
                response_topic,
            )
        message = Message(payload, device_id, correlation)
        if self.rate_limiter is not None and not self.rate_limiter.allow(device_id):
            self._refuse_rate_limited(message)
            return
        self.status.arrived(message)
        try:
            self._queue.put_nowait(message)
        except queue.Full:
            self.service.counters.add("dropped_queue_full")
            self.log_limiter.log(
                logging.WARNING,
                ("queue_full", device_id),
                "request queue full; dropping a request from %s",
                device_id,
            )

    def _refuse_rate_limited(self, message: Message) -> None:
        """Answer a request over its device's rate with a plain RATE_LIMITED error, at once.

        Plain (no decryption, no replay-window update): refusing must cost less than serving.
        The device takes any plain reply as a failed request and answers it degraded.
        """
        rate = self.config.gateway.device_rate
        exc = RateLimitedError(f"device {message.device_id} sends more than {rate:.3g} requests/s")
        self.service.counters.add("rejected_rate_limited")
        self.log_limiter.log(logging.WARNING, ("rate_limited", message.device_id), "refusing: %s", exc)
        reply = refusal(message, None, exc, wire.MessageType.INFER_REQUEST)
        if reply is not None:
            self._reply(message, wire.envelope_to_bytes(reply))

    def _on_upload(
        self, topic: str, payload: bytes, response_topic: str | None, correlation: bytes | None
    ) -> None:
        device_id = wire.device_id_from_topic(topic, "hx")
        if device_id is None:
            self.service.counters.add("hx_rejected_bad_topic")
            return
        try:
            self._hx_queue.put_nowait(Message(payload, device_id, correlation))
        except queue.Full:  # not acknowledged: the device keeps the records and retries
            self.service.counters.add("hx_dropped_queue_full")
            self.log_limiter.log(
                logging.WARNING,
                ("upload_queue_full", device_id),
                "upload queue full; dropping an upload batch from %s",
                device_id,
            )

    # ------------------------------------------------------------------------ worker side
    def _relay_work(self) -> None:
        assert self.relay is not None
        while (item := self._hx_queue.get()) is not None:
            assert item.device_id is not None
            try:
                reply = self.relay.handle(item.payload, item.device_id, item.correlation)
            except Exception:  # keep relaying whatever one batch did
                self.service.counters.add("hx_failed")
                self.log_limiter.log(
                    logging.ERROR,
                    ("upload_failed", item.device_id),
                    "relaying an upload from %s failed",
                    item.device_id,
                    exc_info=True,
                )
                continue
            if reply is not None:
                self._reply(item, reply)

    def _work(self) -> None:
        max_batch = self.config.gateway.max_batch
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(item)
            try:
                decisions = self.service.decide(batch)
            except Exception:  # keep serving whatever one batch did
                self.service.counters.add("batch_failed")
                self.log_limiter.log(
                    logging.ERROR, ("batch_failed",), "batch of %d requests failed", len(batch), exc_info=True
                )
                continue
            for request, decision in zip(batch, decisions, strict=True):
                if isinstance(decision, Forward):
                    if self._backlog.acquire(blocking=False):
                        self._pool.submit(self._forward, request, decision)
                        continue
                    decision = self.service.shed(decision)
                if decision is not None:
                    self._reply(request, decision)

    def _forward(self, request: Message, job: Forward) -> None:
        try:
            with self.service.counters.timed("forward"):
                reply = self.service.forward(job)
        except Exception:
            self.service.counters.add("forward_failed")
            self.log_limiter.log(logging.ERROR, ("forward_failed",), "forwarding failed", exc_info=True)
            return
        finally:
            self._backlog.release()
        if reply is not None:
            self._reply(request, reply)

    def _reply(self, request: Message, payload: bytes) -> None:
        assert request.device_id is not None
        self._link.publish(
            wire.response_topic(request.device_id), payload, correlation_data=request.correlation
        )
        self.service.counters.add("bytes_out", len(payload))
        waited = self.status.replied(request)
        if waited is not None:  # a request's reply (not an upload's receipt): queueing to publishing
            self.service.counters.observe("total", waited)
