"""What a worker keeps warm from one match to the next: its attack processes, each model's CPU timing, and the
clean reference verdicts; made by the worker's state (:class:`arena.execution.state.WorkerState`), closed with it."""

from __future__ import annotations

from dataclasses import dataclass, field

from arena.play.attackers import AttackPool
from arena.play.hosts import MAX_TIMED_MODELS, Timings
from arena.play.judging import MAX_CLEAN_VERDICTS, Verdicts
from arena.play.lru import LRU


@dataclass
class Warm:
    """A worker's warm attack processes (:class:`AttackPool`), how long each model took to classify on the CPU
    (:func:`arena.play.hosts.probe`) and each model's clean reference verdict (:func:`arena.play.judging.judged`)."""

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
