"""Final-partition inference: the cloud's answer to a forwarded request, apart from HTTP.

The last tier of the tier core (:mod:`edgecascade.device_sdk.core.tier`): its exit answers
every input. The model is hot-swappable (:meth:`CloudInference.swap`): a request is
answered by the model of the version its envelope names, the current one or the one it
replaced while that is in its grace period, because gateways swap after the cloud and keep
forwarding their devices' requests of the previous version for a while.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.core import serving, tier
from edgecascade.device_sdk.core.tier import ServesModels, TierModels
from edgecascade.device_sdk.counters import Counters
from edgecascade.device_sdk.model.bundle import Bundle

logger = logging.getLogger(__name__)


class CloudInference(ServesModels):
    """Runs partition 3 on INFER_REQUEST envelopes; raises typed errors on bad input."""

    def __init__(self, bundle: Bundle, num_threads: int = 1, grace: float = 600.0) -> None:
        self.counters = Counters()
        self.models = TierModels("cloud", bundle, num_threads=num_threads, grace=grace)
        #: called once when a request names a version this process does not serve, in case
        #: another server process promoted it (the registry wires this up)
        self.refresh: Callable[[], None] | None = None

    def swap(self, bundle: Bundle) -> None:
        """Answer new requests with ``bundle``; requests of the replaced version during its grace."""
        self.models.swap(bundle)
        self.counters.add("model_swaps")

    def infer(self, request: wire.Envelope) -> wire.Envelope:
        """The RESULT envelope answering a parsed request envelope."""
        version = request.header.model_version
        model = self.models.get(version)
        if model is None and self.refresh is not None:
            self.refresh()
            model = self.models.get(version)
        if model is None:
            raise serving.unknown_version(version, self.models.versions())
        features = serving.request_features(request, model)
        (decision,) = tier.decide(model, features[None])
        assert decision.answer is not None  # the last tier's exit answers everything
        self.counters.add(tier.answered(decision.answer))
        return serving.result_reply(request.header, decision.answer)

    def handle(self, payload: bytes) -> bytes:
        """One request from bytes to bytes: the hop as an in-process cloud link makes it."""
        return wire.envelope_to_bytes(self.infer(wire.envelope_from_bytes(payload)))
