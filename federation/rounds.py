"""Round bookkeeping for the server: who was asked, who answered how, and whether it counts.

Pure (no I/O, no clock): the server app reads the time and the replies, this module only
keeps score. A round never waits on a dead site: it ends at its timeout, a site that has
not answered by then is *late*, and the round *completes* only when at least
:func:`quorum` sites sent an accepted update; a *short* round leaves the model as it was.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal

from edgecascade.device_sdk.errors import ConfigError

RoundState = Literal["completed", "short"]


@dataclass(frozen=True)
class RoundRule:
    """How long a round waits (seconds) and how many accepted updates it needs to count."""

    timeout: float
    min_sites: int
    min_fraction: float

    def __post_init__(self) -> None:
        problems = []
        if not (isinstance(self.timeout, int | float) and math.isfinite(self.timeout) and self.timeout > 0):
            problems.append(f"round timeout must be a finite number of seconds > 0, not {self.timeout!r}")
        if isinstance(self.min_sites, bool) or not isinstance(self.min_sites, int) or self.min_sites < 1:
            problems.append(f"min_sites must be an integer >= 1, not {self.min_sites!r}")
        if not (isinstance(self.min_fraction, int | float) and 0 < self.min_fraction <= 1):
            problems.append(f"min_fraction must be in (0, 1], not {self.min_fraction!r}")
        if problems:
            raise ConfigError(problems)


def quorum(rule: RoundRule, connected: int) -> int:
    """Accepted updates a round needs: ``max(min_sites, ceil(min_fraction * connected))``.

    The fraction is read as the decimal it was written as (0.07 is 7/100), so 0.07 of 100
    sites is 7, not the 8 that ``ceil(0.07 * 100)`` gives in binary floating point.
    """
    if connected < 0:
        raise ValueError(f"connected sites cannot be negative: {connected}")
    share = math.ceil(Fraction(repr(float(rule.min_fraction))) * connected)
    return max(rule.min_sites, share)


@dataclass
class RoundTally:
    """What happened to one round: every sampled site ends accepted, refused, failed or late.

    ``bytes_in`` is what each accepted site sent, ``bytes_out`` what the server sent to each
    sampled site (the same model for all). ``started`` and ``seconds`` are the caller's clock.
    One outcome per sampled site: recording a second, or one for a site that was not asked,
    is a bug in the caller and raises ValueError.
    """

    server_round: int
    sampled: list[str]
    accepted: dict[str, int] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    bytes_in: dict[str, int] = field(default_factory=dict)
    bytes_out: int = 0
    started: float = 0.0
    seconds: float = 0.0

    def _first_outcome(self, site: str) -> None:
        if site not in self.sampled:
            raise ValueError(f"site {site!r} was not sampled in round {self.server_round}")
        if site in self.accepted or site in self.refused or site in self.failed:
            raise ValueError(f"site {site!r} already has an outcome in round {self.server_round}")

    def accept(self, site: str, examples: int, nbytes: int) -> None:
        """``site`` sent an update that passed every check, trained on ``examples`` examples."""
        self._first_outcome(site)
        if examples < 1 or nbytes < 0:
            raise ValueError(f"an accepted update needs examples >= 1 and nbytes >= 0: {examples}, {nbytes}")
        self.accepted[site] = int(examples)
        self.bytes_in[site] = int(nbytes)

    def refuse(self, site: str, reason: str) -> None:
        """``site`` answered with an update the server refused (``reason`` names the counter)."""
        self._first_outcome(site)
        self.refused[site] = reason

    def fail(self, site: str, error: str) -> None:
        """``site`` answered with an error instead of an update (its ClientApp's text)."""
        self._first_outcome(site)
        self.failed[site] = error

    @property
    def late(self) -> list[str]:
        """Sampled sites with no reply (yet, or by the timeout: then their replies are dropped)."""
        return [
            s
            for s in self.sampled
            if s not in self.accepted and s not in self.refused and s not in self.failed
        ]

    def state(self, rule: RoundRule, connected: int) -> RoundState:
        """``completed`` when enough updates were accepted to aggregate, else ``short``."""
        return "completed" if len(self.accepted) >= quorum(rule, connected) else "short"

    def counters(self) -> dict[str, int]:
        """Counts for metrics and logs: sampled, accepted, failed, late, ``refused_<reason>``."""
        counts = {
            "sampled": len(self.sampled),
            "accepted": len(self.accepted),
            "failed": len(self.failed),
            "late": len(self.late),
        }
        for reason in sorted(set(self.refused.values())):
            counts[f"refused_{reason}"] = sum(1 for r in self.refused.values() if r == reason)
        return counts

    def to_json(self) -> dict[str, Any]:
        """A plain dict for the database and the API (``late`` included, seconds to ms)."""
        return {
            "server_round": self.server_round,
            "sampled": list(self.sampled),
            "accepted": dict(self.accepted),
            "refused": dict(self.refused),
            "failed": dict(self.failed),
            "late": self.late,
            "bytes_in": dict(self.bytes_in),
            "bytes_out": self.bytes_out,
            "started": self.started,
            "seconds": round(self.seconds, 3),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RoundTally:
        """The tally :meth:`to_json` wrote (``late`` is derived, so it is not read back)."""
        return cls(
            server_round=int(data["server_round"]),
            sampled=[str(s) for s in data["sampled"]],
            accepted={str(k): int(v) for k, v in data["accepted"].items()},
            refused={str(k): str(v) for k, v in data["refused"].items()},
            failed={str(k): str(v) for k, v in data["failed"].items()},
            bytes_in={str(k): int(v) for k, v in data["bytes_in"].items()},
            bytes_out=int(data["bytes_out"]),
            started=float(data["started"]),
            seconds=float(data["seconds"]),
        )


def bytes_per_site(tally: RoundTally) -> float:
    """Mean bytes moved per accepted site in a round: what it sent plus what it was sent."""
    if not tally.accepted:
        return 0.0
    sent = sum(tally.bytes_in.get(site, 0) for site in tally.accepted)
    return (sent + tally.bytes_out * len(tally.accepted)) / len(tally.accepted)
