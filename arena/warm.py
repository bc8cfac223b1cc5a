"""What a worker keeps warm from one match to the next: its attack processes, each model's CPU timing, and the
clean reference verdicts; made by the worker's state (:class:`arena.execution.state.WorkerState`), closed with it."""

from __future__ import annotations

from dataclasses import dataclass, field

from arena.attackers import AttackPool
from arena.hosts import MAX_TIMED_MODELS, Timings
from arena.judging import MAX_CLEAN_VERDICTS, Verdicts
from arena.lru import LRU


@dataclass
class Warm:
    """A worker's warm attack processes (:class:`AttackPool`), how long each model took to classify on the CPU
    (:func:`arena.hosts.probe`) and each model's clean reference verdict (:func:`arena.judging.judged`)."""

    attacks: AttackPool = field(default_factory=AttackPool)
    timings: Timings = field(default_factory=lambda: LRU(MAX_TIMED_MODELS))
    verdicts: Verdicts = field(default_factory=lambda: LRU(MAX_CLEAN_VERDICTS))

    def close(self) -> None:
        """Close the attack processes and forget the rest."""
        self.attacks.close()
        self.timings.clear()
        self.verdicts.clear()

    def __enter__(self) -> Warm:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
