"""Find the candidate cut points of a trained network and measure them on this machine with LiteRT.

The trunk is the chain of stages (device → gateway → cloud) from the image to the final
logits; exit heads branch off it. A candidate cut is a trunk tensor of rank 4 that carries
everything the rest needs (no skip connection bypasses it) at a block boundary: the next
trunk operation is not a shape-preserving, kernel-free follower such as batch norm, an
activation, dropout or a sign. Stage ends (today's cuts) and the tensors exit heads
branch from are always candidates. Nothing here knows layer names, so a different
architecture (a binarised cut, wider stages, residual blocks) needs no change.

Each segment between consecutive candidates, the tail to the final logits and every exit
head become a Keras sub-model, converted with :func:`edgecascade.training.export.convert_stage` and
timed in the LiteRT interpreter on one thread, one input at a time, on real images
propagated through the previous segments. TensorFlow is imported only when profiling.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgecascade.device_sdk.core.policy import confidence_score
from edgecascade.device_sdk.errors import ModelError
from edgecascade.device_sdk.model.bundle import TIERS
from edgecascade.device_sdk.model.runtime import interpreter_class
from edgecascade.tools.cut_cost import (
    TYPICAL_DEVICE_ID,
    CutPoint,
    ExitPoint,
    Profile,
    cut_bytes,
    envelope_overhead,
    survival_shares,
)

Progress = Callable[[str], None]
"""Receives one short line per profiled segment."""


@dataclass(frozen=True)
class TrunkPoint:
    """A candidate cut located in a stage's Keras graph."""

    name: str
    stage: str
    tensor: Any  # KerasTensor
    current: str | None = None


@dataclass(frozen=True)
class ExitHead:
    """An early exit located in a stage's Keras graph; ``position`` indexes :attr:`Trunk.points`."""

    name: str
    stage: str
    position: int
    source: Any  # the trunk KerasTensor it branches from
    output: Any  # its logits KerasTensor


@dataclass(frozen=True)
class Trunk:
    """The candidate cuts and exit heads of a trained network, in trunk order."""

    points: tuple[TrunkPoint, ...]
    exits: tuple[ExitHead, ...]
    stages: tuple[Any, ...]  # the stage models, device first
    final: Any  # the final logits KerasTensor, in the last stage

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.points)


@dataclass(frozen=True)
class _Graph:
    """One stage's operations with their input and output tensors, by ``id``."""

    producer: dict[int, Any]
    inputs: dict[int, list[Any]]
    outputs: dict[int, list[Any]]


def _graph(model: Any) -> _Graph:
    import keras

    producer: dict[int, Any] = {}
    inputs: dict[int, list[Any]] = {}
    outputs: dict[int, list[Any]] = {}
    for op in model.operations:
        if isinstance(op, keras.layers.InputLayer):
            continue
        try:
            ins, outs = keras.tree.flatten(op.input), keras.tree.flatten(op.output)
        except (AttributeError, ValueError) as exc:  # e.g. a layer used at several places
            raise ModelError(f"{model.name}: cannot trace operation {op.name}: {exc}") from None
        inputs[id(op)], outputs[id(op)] = ins, outs
        producer.update((id(t), op) for t in outs)
    return _Graph(producer, inputs, outputs)


def _ancestry(graph: _Graph, tensor: Any) -> list[Any]:
    """Operations ``tensor`` depends on, in topological order."""
    order: list[Any] = []
    seen: set[int] = set()

    def visit(t: Any) -> None:
        op = graph.producer.get(id(t))
        if op is None or id(op) in seen:
            return
        seen.add(id(op))
        for x in graph.inputs[id(op)]:
            visit(x)
        order.append(op)

    visit(tensor)
    return order


def _articulations(graph: _Graph, order: list[Any], source: Any, out: Any) -> list[Any]:
    """Tensors in ``order`` through which every path from ``source`` to ``out`` passes."""
    last_use = {id(source): -1}
    for pos, op in enumerate(order):
        for x in graph.inputs[id(op)]:
            last_use[id(x)] = pos
    last_use[id(out)] = len(order)
    live = {id(source)} if last_use[id(source)] >= 0 else set()
    found = []
    for pos, op in enumerate(order):
        live -= {id(x) for x in graph.inputs[id(op)] if last_use[id(x)] == pos}
        made = [t for t in graph.outputs[id(op)] if last_use.get(id(t), -1) > pos]
        live |= {id(t) for t in made}
        if len(made) == 1 and live == {id(made[0])}:
            found.append(made[0])
    return found


def _is_follower(op: Any, graph: _Graph) -> bool:
    """A shape-preserving, kernel-free, single-input operation (BN, activation, dropout, sign, …)."""
    ins, outs = graph.inputs[id(op)], graph.outputs[id(op)]
    has_kernel = any("kernel" in w.name for w in getattr(op, "weights", []))
    return len(ins) == 1 and len(outs) == 1 and tuple(ins[0].shape) == tuple(outs[0].shape) and not has_kernel


def _split_outputs(model: Any) -> tuple[Any, list[Any]]:
    """``(trunk output, exit logits)``: the rank-4 output carries on; without one, the logits are the end."""
    features = [t for t in model.outputs if len(t.shape) == 4]
    logits = [t for t in model.outputs if len(t.shape) == 2]
    if len(features) > 1 or len(features) + len(logits) != len(model.outputs):
        raise ModelError(
            f"{model.name}: outputs {[tuple(t.shape) for t in model.outputs]} are not logits/features"
        )
    if features:
        return features[0], logits
    if len(logits) != 1:
        raise ModelError(f"{model.name}: the last stage must output one logits tensor")
    return logits[0], []


def _stage_candidates(graph: _Graph, order: list[Any], source: Any, out: Any, forced: set[int]) -> list[Any]:
    """Block-boundary articulation tensors of rank 4 on one stage's trunk, plus ``forced`` ones."""
    consumers: dict[int, list[Any]] = {}
    for op in order:
        for x in graph.inputs[id(op)]:
            consumers.setdefault(id(x), []).append(op)
    picked = []
    for t in _articulations(graph, order, source, out):
        if len(t.shape) != 4:
            continue
        after = consumers.get(id(t), [])
        boundary = t is out or not (len(after) == 1 and _is_follower(after[0], graph))
        if boundary or id(t) in forced:
            picked.append(t)
    return picked


def _exit_source(graph: _Graph, trunk_ops: set[int], logits: Any, stage: str) -> Any:
    """The one trunk tensor an exit head branches from."""
    head = [op for op in _ancestry(graph, logits) if id(op) not in trunk_ops]
    made = {id(t) for op in head for t in graph.outputs[id(op)]}
    sources = {id(x): x for op in head for x in graph.inputs[id(op)] if id(x) not in made}
    if len(sources) != 1:
        raise ModelError(f"{stage}: exit {logits.name} reads {len(sources)} trunk tensors; expected one")
    return next(iter(sources.values()))


def trace_trunk(stages: tuple[Any, ...]) -> Trunk:
    """Candidate cuts and exit heads of the chained ``stages`` (Keras models, device first)."""
    if len(stages) != len(TIERS):
        raise ValueError(f"need one stage per tier {TIERS}, got {len(stages)}")
    points: list[TrunkPoint] = []
    exits: list[ExitHead] = []
    final = None
    for k, (tier, model) in enumerate(zip(TIERS, stages, strict=True)):
        graph = _graph(model)
        out, logits = _split_outputs(model)
        order = _ancestry(graph, out)
        trunk_ops = {id(op) for op in order}
        sources = [_exit_source(graph, trunk_ops, z, tier) for z in logits]
        source = model.inputs[0]
        found = _stage_candidates(graph, order, source, out, {id(s) for s in sources})
        first = len(points)
        current = f"cut{k + 1}" if k + 1 < len(stages) else None
        points += [TrunkPoint(_op_name(graph, t), tier, t, current if t is out else None) for t in found]
        index = {id(p.tensor): i for i, p in enumerate(points)}
        for z, s in zip(logits, sources, strict=True):
            if id(s) not in index and s is not source:
                raise ModelError(f"{tier}: exit {z.name} branches inside a block; it cannot be placed")
            position = index.get(id(s), first - 1)
            exits.append(ExitHead(_op_name(graph, z), tier, position, s, z))
        final = out
    if not points:
        raise ModelError("the network has no rank-4 trunk tensor to cut after")
    exits.sort(key=lambda e: e.position)  # stable: exits of one stage keep their output order
    return Trunk(tuple(_unique_names(points)), tuple(exits), tuple(stages), final)


def _op_name(graph: _Graph, tensor: Any) -> str:
    return str(graph.producer[id(tensor)].name)


def _unique_names(points: list[TrunkPoint]) -> list[TrunkPoint]:
    """Layer names, prefixed with the stage where two stages use the same name."""
    names = [p.name for p in points]
    return [
        p if names.count(p.name) == 1 else TrunkPoint(f"{p.stage}/{p.name}", p.stage, p.tensor, p.current)
        for p in points
    ]


@dataclass(frozen=True)
class _Job:
    """One sub-model to time: it reads the output of job ``source`` (-1: the images)."""

    label: str
    model: Any
    source: int


def _sub_model(stage: Any, source: Any, output: Any, label: str) -> Any:
    import keras

    name = "".join(c if c.isalnum() else "_" for c in f"{stage.name}_{label}")
    return keras.Model(inputs=source, outputs=output, name=name)


def _jobs(trunk: Trunk) -> list[_Job]:
    """Trunk segments (one per point, in order), the tail to the final logits, then the exit heads."""
    stages = dict(zip(TIERS, trunk.stages, strict=True))
    jobs = []
    ends = [*trunk.points, TrunkPoint("head", TIERS[-1], trunk.final)]
    for k, point in enumerate(ends):
        stage = stages[point.stage]
        prev = trunk.points[k - 1] if k > 0 else None
        source = prev.tensor if prev is not None and prev.stage == point.stage else stage.inputs[0]
        jobs.append(
            _Job(f"{point.stage} {point.name}", _sub_model(stage, source, point.tensor, point.name), k - 1)
        )
    for head in trunk.exits:
        model = _sub_model(stages[head.stage], head.source, head.output, head.name)
        jobs.append(_Job(f"{head.stage} exit {head.name}", model, head.position))
    return jobs


def _time_invoke(content: bytes, x: np.ndarray, warmup: int) -> tuple[float, np.ndarray]:
    """Median ms of one single-input, single-thread invoke over ``x``, and the outputs."""
    interp = interpreter_class()(model_content=content, num_threads=1)
    (inp,), outs = interp.get_input_details(), interp.get_output_details()
    if len(outs) != 1:
        raise ModelError(f"a profiled segment has {len(outs)} outputs, expected 1")
    interp.resize_tensor_input(inp["index"], [1, *x.shape[1:]], strict=False)
    interp.allocate_tensors()

    def run(sample: np.ndarray) -> float:
        interp.set_tensor(inp["index"], sample[None])
        start = time.perf_counter()
        interp.invoke()
        return time.perf_counter() - start

    for k in range(warmup):
        run(x[k % len(x)])
    times, results = [], []
    for sample in x:
        times.append(run(sample))
        results.append(interp.get_tensor(outs[0]["index"])[0].copy())
    return statistics.median(times) * 1e3, np.stack(results)


def _survival(trunk: Trunk, trained: Any, images: np.ndarray) -> tuple[float, ...]:
    """Share of ``images`` left after each prefix of early exits at the trained thresholds and score."""
    tiers = [TIERS.index(e.stage) for e in trunk.exits]
    if len(set(tiers)) != len(tiers):
        raise ModelError("a stage has more than one early exit; the checkpoint holds one threshold per stage")
    probs = trained.exit_probs(images)  # calibrated, each cut through its wire encoding, as deployed
    score = confidence_score(trained.config.exit_score)
    return survival_shares([score(probs[t]) for t in tiers], [trained.thresholds[t] for t in tiers])


def profile_trunk(
    trunk: Trunk,
    trained: Any,
    images: np.ndarray,
    samples: int = 200,
    warmup: int = 10,
    progress: Progress | None = None,
    device_id: str = TYPICAL_DEVICE_ID,
) -> Profile:
    """Measure ``trunk`` of ``trained`` (a :class:`~edgecascade.training.train.TrainedModel`)
    on raw ``images``.

    Latencies are medians over the first ``samples`` images; exit rates use all of them.
    """
    from edgecascade.training.export import convert_stage

    if samples < 1 or not len(images):
        raise ValueError("profiling needs at least one image")
    x = np.ascontiguousarray(trained.input_spec.normalise(images[:samples]), dtype=np.float32)
    data: dict[int, np.ndarray] = {-1: x}
    latency: list[float] = []
    jobs = _jobs(trunk)
    for k, job in enumerate(jobs):
        ms, out = _time_invoke(convert_stage(job.model), data[job.source], warmup)
        data[k] = out
        latency.append(ms)
        if progress is not None:
            progress(f"[{k + 1}/{len(jobs)}] {job.label}: {ms:.3f} ms")
    overhead = envelope_overhead(device_id)
    points = []
    for k, p in enumerate(trunk.points):
        binarised = bool(np.all(np.abs(data[k]) == 1.0))
        shape = tuple(int(d) for d in p.tensor.shape[1:])
        points.append(
            CutPoint(
                p.name,
                p.stage,
                shape,
                latency[k],
                cut_bytes(shape, binarised, overhead),
                binarised,
                p.current,
            )
        )
    n = len(trunk.points)
    exits = tuple(
        ExitPoint(e.name, e.position, latency[n + 1 + k], float(trained.thresholds[TIERS.index(e.stage)]))
        for k, e in enumerate(trunk.exits)
    )
    return Profile(
        tuple(points),
        latency[n],
        exits,
        _survival(trunk, trained, images),
        samples=len(x),
        exit_samples=len(images),
        header_bytes=overhead,
        exit_score=str(trained.config.exit_score),
    )
