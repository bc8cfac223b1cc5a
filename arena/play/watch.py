"""Whose code runs when: the defense's time in an attack's process is the defense's, and so is its failure there.

Under white-box and gray-box the defended model (or its twin) runs in the attack's process. Its guard
(:class:`arena.play.threats.GuardedModel`) tells the arena, by one-way notices, when the defense's code starts and
ends there: its ``forward``, its ``reject`` and the backward pass through it. :class:`DefenseWatch`, on the
arena's side of the pipe,

* does not charge that time to the attack's limit (nor the time the arena spends answering the attack's
  queries, or the defense's host a model apart), up to ``most_excused`` (a forged notice buys an attack no
  more; a time-out beyond it is replayed apart, where the arena times the defense's host itself);
* stops the call when the defense's code overruns its inference budget for the images it holds
  (:class:`InferenceBudget`);
* remembers that the defense's code was running when the process died or was stopped: the match is then
  replayed with the defense apart (:func:`arena.play.match.play`), and only what fails again there is the
  defense's.

The notices come from the attack's process, so an attack can forge them; a forged notice wins it at most a
replay apart, where the defense's code runs in a host of its own and there is nothing left to forge.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from arena.sandbox import wire

#: seconds any call to a defense may take beyond its per-image budget (a first call's lazy set-up, a busy machine)
GRACE_SECONDS = 5.0
#: a backward pass through the defense may take this many times its forward budget
BACKWARD_FACTOR = 3.0


@dataclass(frozen=True)
class InferenceBudget:
    """How long a defense may take to answer for ``n`` images: ``per_image`` seconds each, plus a grace."""

    per_image: float

    def seconds(self, images: int, factor: float = 1.0) -> float:
        """The most a call holding ``images`` images may take (``factor``: a backward pass's allowance)."""
        return GRACE_SECONDS + factor * self.per_image * max(images, 0)

    def overrun(self, seconds: float, images: int) -> str:
        """The reason given when a call of ``images`` images ran ``seconds`` seconds, past its budget."""
        return (
            f"the defense took more than {seconds:.1f} s to answer for {images} image(s): over its inference budget "
            f"of {1000 * self.per_image:g} ms per image (plus {GRACE_SECONDS:g} s a call)"
        )


class DefenseWatch:
    """The time the defense's code runs in an attack's process (see the module's docstring): a :class:`Watch`
    for :meth:`arena.sandbox.Sandbox.call`."""

    def __init__(
        self,
        budget: InferenceBudget,
        most_excused: float,
        most_images: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._budget, self._most, self._most_images, self._clock = budget, most_excused, most_images, clock
        self._depth = 0
        self._entered = 0.0
        self._images = 0
        self._factor = 1.0
        self._excused = 0.0
        self.overran: str | None = None  # why the watch stopped the call, if it did

    @property
    def inside(self) -> bool:
        """Whether the defense's code is running in the attack's process, by the last notices."""
        return self._depth > 0

    def notice(self, payload: Any) -> None:
        """:func:`arena.sandbox.wire.enter` or :data:`arena.sandbox.wire.LEAVE`; anything else is ignored."""
        try:
            entered = wire.decode_notice(payload)
        except wire.ProtocolError:
            return
        if entered is None:
            if self._depth > 0:
                self._depth -= 1
                if self._depth == 0:
                    self._excused += self._clock() - self._entered
            return
        images, phase = entered
        if self._depth == 0:  # an attack may forge the count: a call is allowed the time of so many images at most
            self._entered, self._images = self._clock(), min(max(images, 0), self._most_images)
            self._factor = BACKWARD_FACTOR if phase == "backward" else 1.0
        self._depth += 1

    def excuse(self, seconds: float) -> None:
        """Do not charge ``seconds`` the arena spent for the attack (answering a query) to its limit."""
        self._excused += seconds

    def excused(self) -> float:
        """Seconds of the call not charged to the attack's limit, at most ``most_excused``."""
        running = self._clock() - self._entered if self._depth > 0 else 0.0
        return min(self._most, self._excused + running)

    @property
    def exhausted(self) -> bool:
        """Whether the defense's time (or the arena's) has reached ``most_excused``: a time-out then is at
        least as much the defense's doing as the attack's."""
        return self.excused() >= self._most

    def overdue(self) -> str | None:
        """Why the call must stop: the defense's code has run past its budget in the attack's process."""
        if self._depth == 0:
            return None
        allowed = self._budget.seconds(self._images, self._factor)
        if self._clock() - self._entered <= allowed:
            return None
        self.overran = "stopped in the defense's code: " + self._budget.overrun(allowed, self._images)
        return self.overran
