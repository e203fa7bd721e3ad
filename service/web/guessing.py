"""What a wrong OPS_TOKEN costs: the /ops bearer routes and the console's login form share one
pace for wrong credentials, per web process.

Every wrong credential is answered only at its turn, and the turns are PACE_SECONDS apart
whoever sends them and however many at once: a thousand guesses sent in parallel get their
401s spread over 1000 x PACE_SECONDS, not all at once. The right credential is compared first
(in constant time) and never waits, so a flood of wrong guesses cannot lock the operator out.
The pace is per process, not per client: behind `kubectl port-forward` or an ingress every
client has the same address.

There is deliberately no quick 429 once wrong guesses pile up: a quick answer to a wrong
credential is itself the answer "wrong" (the right one would have been let in), so it would
give back exactly the rate the pace takes away. A waiting guess costs this process an idle
coroutine and costs the attacker an open connection, so the queue is bounded by how many
connections a client can hold open, as it is for any slow client.
"""

from __future__ import annotations

import asyncio
import time

PACE_SECONDS = 0.5  # between two answers to wrong credentials, per web process


class WrongGuesses:
    def __init__(self, pace_seconds: float = PACE_SECONDS) -> None:
        self._pace = pace_seconds
        self._next_turn = 0.0  # monotonic time of the next free turn

    def waiting_seconds(self) -> float:
        """How long a wrong credential sent now would wait for its answer."""
        return max(time.monotonic(), self._next_turn) + self._pace - time.monotonic()

    async def wait_turn(self) -> None:
        """Return at this wrong credential's turn: the next free one, PACE_SECONDS after the last."""
        now = time.monotonic()
        self._next_turn = turn = max(now, self._next_turn) + self._pace
        await asyncio.sleep(turn - now)
