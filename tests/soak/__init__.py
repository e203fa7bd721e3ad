"""The project's own chaos soak (issue 8): real processes, Codat's catalogue events delivered the
way Svix delivers them (late, twice, out of order, replayed), a Codat that fails at random, a
worker SIGKILLed and Valkey restarted, then every connection checked against an independent model
of the truth. It uses none of the service's code: only its processes, HTTP routes and Redis keys.

    python -m tests.soak --connections 1500 --seeds 1,2,3
"""

from tests.soak.runner import SoakConfig, SoakResult, run_soak

__all__ = ["SoakConfig", "SoakResult", "run_soak"]
