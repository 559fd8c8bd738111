"""The Flower ClientApp a site's SuperNode runs: local training and evaluation on data that stays there.

A ``train`` message carries the round's weights (``arrays``) and settings (``config``); the
site loads them into its copy of the served model's Keras stages (``checkpoint``), measures
them on its held-out slice, fine-tunes them on the rest of its data
(:mod:`edgecascade.federation.local_training`) and answers with the *delta* to the weights it
was sent, compressed, and signed with the site's key (:mod:`edgecascade.federation.updates`).
When the node config names ``labelled-examples`` (the examples the cloud's people labelled
for this site, fetched with ``edgecascade site examples``), they join the training part,
never the held-out slice, which stays a sample of the site's own data.
Only weights, example counts and accuracies leave the site. An ``evaluate`` message asks for
the accuracies of the weights it carries, and of the baseline weights it carries too, on the
held-out slice.

The SuperNode's node config says who the site is and where its things are::

    site="clinic-a" data="site.npz" checkpoint="model/checkpoint" key="clinic-a.key"
    holdout-fraction=0.2 seed=0 labelled-examples="labelled.npz"

Anything wrong (weights of another shape, a missing file, unreadable data) raises a typed
error, which Flower returns to the server as the reply's error: the server counts the site
as failed for the round and goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.clientapp import ClientApp

from edgecascade.device_sdk.errors import ConfigError, DatasetError
from edgecascade.federation import messages, updates
from edgecascade.federation.site_data import (
    check_input_shape,
    load_labelled_examples,
    load_site_data,
    split_holdout,
)
from edgecascade.federation.site_keys import load_private_key

if TYPE_CHECKING:
    from edgecascade.training.train import TrainedModel

logger = logging.getLogger(__name__)

Labelled = tuple[np.ndarray, np.ndarray]
Split = tuple[Labelled, Labelled]  # (training, held out)

app = ClientApp()


@dataclass(frozen=True)
class SiteNode:
    """A site as its SuperNode's node config describes it."""

    site: str
    data: Path
    checkpoint: Path
    key: Path
    holdout_fraction: float = 0.2
    seed: int = 0
    labelled_examples: Path | None = None

    @classmethod
    def from_node_config(cls, config: dict[str, object]) -> SiteNode:
        missing = [k for k in ("site", "data", "checkpoint", "key") if k not in config]
        if missing:
            raise ConfigError([f"the SuperNode's node config needs {k}=..." for k in missing])
        return cls(
            site=str(config["site"]),
            data=Path(str(config["data"])),
            checkpoint=Path(str(config["checkpoint"])),
            key=Path(str(config["key"])),
            holdout_fraction=float(str(config.get("holdout-fraction", 0.2))),
            seed=int(str(config.get("seed", 0))),
            labelled_examples=Path(str(config["labelled-examples"]))
            if config.get("labelled-examples")
            else None,
        )


def _load(node: SiteNode, arrays: Sequence[np.ndarray]) -> tuple[TrainedModel, Split]:
    """The site's model with ``arrays`` loaded, and its (training, held-out) data."""
    from edgecascade.federation.local_training import set_model_weights
    from edgecascade.training.train import load_trained

    trained = load_trained(node.checkpoint)
    set_model_weights(trained, arrays)
    x, y = load_site_data(node.data, trained.classes)
    x = check_input_shape(x, trained.input_spec.shape)
    return trained, split_holdout(x, y, node.holdout_fraction, node.seed)


def _labelled(node: SiteNode, trained: TrainedModel) -> Labelled | None:
    """The cloud's labels for this site that fit the model, or None (none fetched, or unusable)."""
    if node.labelled_examples is None:
        return None
    found = load_labelled_examples(node.labelled_examples, trained.classes)
    if found is None:
        return None
    try:
        return check_input_shape(found[0], trained.input_spec.shape), found[1]
    except DatasetError as exc:
        logger.warning("labelled examples %s left out: %s", node.labelled_examples, exc)
        return None


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Fine-tune the round's weights on this site's data; answer with a signed, compressed delta."""
    from edgecascade.federation.local_training import (
        LocalTraining,
        exit_accuracies,
        model_weights,
        train_locally,
    )

    node = SiteNode.from_node_config(dict(context.node_config))
    config = messages.config(msg.content)
    base = updates.received_weights(messages.arrays(msg.content))
    server_round = messages.integer(config, "server-round")
    version = messages.integer(config, "model-version")
    compression = messages.text(config, "compression")
    trained, ((x_train, y_train), (x_hold, y_hold)) = _load(node, base)
    before = exit_accuracies(trained, x_hold, y_hold)
    labelled = _labelled(node, trained)
    if labelled is not None:
        x_train, y_train = np.concatenate([x_train, labelled[0]]), np.concatenate([y_train, labelled[1]])
    settings = LocalTraining(
        epochs=messages.integer(config, "local-epochs"),
        batch_size=messages.integer(config, "batch-size"),
        learning_rate=messages.number(config, "learning-rate"),
        proximal_mu=messages.number(config, "proximal-mu", 0.0),
        seed=node.seed + server_round,
    )
    summary = train_locally(trained, x_train, y_train, settings)
    encoded = updates.encode_update(base, model_weights(trained), compression)
    digest = updates.update_digest(
        site=node.site,
        run=msg.metadata.run_id,
        server_round=server_round,
        model_version=version,
        compression=compression,
        num_examples=len(y_train),
        arrays=encoded,
    )
    signature = updates.sign_update(load_private_key(node.key), digest)
    logger.info(
        "%s: round %d trained on %d examples (%d labelled in the cloud), loss %.4f",
        node.site,
        server_round,
        len(y_train),
        0 if labelled is None else len(labelled[1]),
        summary["loss"],
    )
    numbers: dict[str, int | float] = {
        "num-examples": len(y_train),
        "labelled-examples": 0 if labelled is None else len(labelled[1]),
        "holdout-examples": len(y_hold),
        **summary,
    }
    numbers |= messages.exit_metrics("accuracy-before", before)
    update = {
        "site": node.site,
        "model-version": version,
        "compression": compression,
        "signature": signature,
        "received-digest": updates.weights_digest(base),
    }
    return messages.reply(
        msg,
        {
            messages.ARRAYS: ArrayRecord(encoded),
            messages.METRICS: MetricRecord(numbers),  # type: ignore[arg-type]
            messages.UPDATE: ConfigRecord(update),  # type: ignore[arg-type]
        },
    )


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """The accuracies of the weights in ``msg`` and of its baseline on this held-out slice."""
    from edgecascade.federation.local_training import exit_accuracies, set_model_weights

    node = SiteNode.from_node_config(dict(context.node_config))
    trained, (_, (x_hold, y_hold)) = _load(node, messages.arrays(msg.content, messages.BASELINE))
    numbers: dict[str, int | float] = {"num-examples": len(y_hold)}
    numbers |= messages.exit_metrics("baseline", exit_accuracies(trained, x_hold, y_hold))
    set_model_weights(trained, messages.arrays(msg.content))
    numbers |= messages.exit_metrics("accuracy", exit_accuracies(trained, x_hold, y_hold))
    return messages.reply(
        msg,
        {messages.METRICS: MetricRecord(numbers), messages.UPDATE: ConfigRecord({"site": node.site})},  # type: ignore[arg-type]
    )
