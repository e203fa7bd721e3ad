"""Console sessions ended by a logout (service.web.auth keeps the session itself in a
signed cookie). A logout writes the session's nonce here, kept exactly as long as the session
would still have been valid, so a copy of the cookie opens nothing afterwards on any replica;
the key then expires by itself and nothing grows."""

from __future__ import annotations

from redis.asyncio import Redis

from service.stores import keys


class RevokedSessions:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def revoke(self, nonce: str, remaining_ms: int) -> None:
        await self._redis.set(keys.revoked_session(nonce), "1", px=max(1, remaining_ms))

    async def revoked(self, nonce: str) -> bool:
        return bool(await self._redis.exists(keys.revoked_session(nonce)))
