"""Final-partition inference: the cloud's answer to a forwarded request, apart from HTTP."""

from __future__ import annotations

from device_sdk import serving, wire
from device_sdk.bundle import Bundle
from device_sdk.policy import softmax
from device_sdk.runtime import PartitionRunner


class CloudInference:
    """Runs partition 3 on INFER_REQUEST envelopes; raises typed errors on bad input."""

    def __init__(self, bundle: Bundle, num_threads: int = 1) -> None:
        self.bundle = bundle
        self.version = bundle.manifest.version
        self._spec = bundle.manifest.partition("cloud")
        self._cut_encoding = bundle.manifest.partition("gateway").encoding
        self._runner = PartitionRunner.from_bundle(bundle, "cloud", num_threads)
        self.counters = serving.Counters()

    def infer(self, payload: bytes) -> bytes:
        """Answer one request envelope with a RESULT envelope."""
        header, tensor = serving.parse_infer_request(payload, self.version, self._spec, self._cut_encoding)
        logits = self._runner.run(tensor[None]).logits
        probs = softmax(logits, self._spec.exit.temperature)[0]
        self.counters.add("answered_cloud")
        return serving.result_reply(header, wire.Result(int(probs.argmax()), probs, wire.Tier.CLOUD))
