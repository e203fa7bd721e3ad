-- The rate-limit pause's one rule (service.stores.rate_limit), included by every script that
-- decides whether a Codat call may go out: `-- include: rate_limit_paused`. The pause is the
-- time (ms) it lasts until, set by rate_limit_pause and expiring then; it holds while that time
-- is ahead.
-- paused_until(pause, now) returns the pause's end (ms) while it holds, else false.
local function paused_until(pause, now)
  local until_ms = tonumber(redis.call('GET', pause) or '0')
  if until_ms > now then return until_ms end
  return false
end
