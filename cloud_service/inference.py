"""Final-partition inference: the cloud's answer to a forwarded request, apart from HTTP.

The model is hot-swappable (:meth:`CloudInference.swap`): a request is answered by the
model of the version its envelope names, the current one or the one it replaced while that
is in its grace period (:mod:`edgecascade.device_sdk.model.hotswap`), because gateways swap after the cloud
and keep forwarding their devices' requests of the previous version for a while.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.core import serving
from edgecascade.device_sdk.core.policy import policy_from_spec, softmax
from edgecascade.device_sdk.core.tier import ServesModels, TierModel
from edgecascade.device_sdk.counters import Counters
from edgecascade.device_sdk.model.bundle import Bundle
from edgecascade.device_sdk.model.hotswap import ServedModels
from edgecascade.device_sdk.model.runtime import PartitionRunner

logger = logging.getLogger(__name__)


class CloudInference(ServesModels):
    """Runs partition 3 on INFER_REQUEST envelopes; raises typed errors on bad input."""

    def __init__(self, bundle: Bundle, num_threads: int = 1, grace: float = 600.0) -> None:
        self.num_threads = num_threads
        self.counters = Counters()
        self._models = ServedModels(self._load(bundle), grace)
        #: called once when a request names a version this process does not serve, in case
        #: another server process promoted it (the registry wires this up)
        self.refresh: Callable[[], None] | None = None

    def _load(self, bundle: Bundle) -> TierModel:
        runner = PartitionRunner.from_bundle(bundle, "cloud", self.num_threads)
        return TierModel("cloud", bundle, runner, policy_from_spec(bundle.manifest.partition("cloud").exit))

    def swap(self, bundle: Bundle) -> None:
        """Answer new requests with ``bundle``; requests of the replaced version during its grace."""
        old = self._models.swap(self._load(bundle))
        self.counters.add("model_swaps")
        logger.info("cloud now serves model v%d (replacing v%d)", bundle.manifest.version, old.version)

    def infer(self, payload: bytes) -> bytes:
        """Answer one request envelope with a RESULT envelope."""
        envelope = wire.envelope_from_bytes(payload)
        version = envelope.header.model_version
        model = self._models.get(version)
        if model is None and self.refresh is not None:
            self.refresh()
            model = self._models.get(version)
        if model is None:
            raise serving.unknown_version(version, self._models.versions())
        header, tensor = serving.check_infer_request(envelope, model.version, model.spec, model.cut_encoding)
        logits = model.runner.run(tensor[None]).logits
        probs = softmax(logits, model.spec.exit.temperature)[0]
        self.counters.add("answered_cloud")
        return serving.result_reply(header, wire.Result(int(probs.argmax()), probs, wire.Tier.CLOUD))
