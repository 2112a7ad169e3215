"""The job store on a message broker: Redis Streams with a consumer group, for several nodes sharing work.

:class:`RedisJobStore` implements :class:`mammoxai.node.jobstore.JobStore` (life cycle and
guarantees there) for ``node.job_store = "redis"``: one SCP process (``serve --role scp``)
receives and enqueues, any number of worker processes (``serve --role worker``) on any
number of machines claim, process and send. Why Redis Streams rather than RabbitMQ: see
the README section "More than one machine".

Every state transition is one Lua script, so it is atomic on the server; with the broker's
``appendonly yes`` + ``appendfsync always`` (``docker/redis.conf``) a script's effects are
on disk before its reply, which is what the SCP waits for before answering Success.

Keys (``P`` = the key prefix, ``mammoxai``)::

    P:seq              INCR: job ids (unique across every process: they name spool folders)
    P:job:ID           HASH: the job's fields (:class:`~mammoxai.node.jobstore.Job`), plus the
                       worker holding it and its live stream entry
    P:keys             HASH: SOP Instance UID (or 'summary:STUDY') -> job id
    P:state:STATE      ZSET: job ids per state (score = id): counts, listings
    P:study:UID        SET: the study's job ids
    P:active           HASH: study -> instance jobs waiting or running (a summary waits for 0)
    P:due              ZSET: study -> last reception time, for studies whose summary is due
    P:summary:UID      STRING (PX lease): the process making the study's summary now
    P:sendq            ZSET: 'sending' job ids -> when a sender may take them next
    P:work, P:retry    STREAMS, consumer group 'workers': one entry per waiting job; jobs tried
                       before go to P:retry and are claimed alone

Delivery is at-least-once. A worker reads an entry (``XREADGROUP``): it stays in that
worker's pending list (PEL) until the job's results are staged (or it is ignored / failed),
then it is acknowledged and deleted. While the worker lives, a heartbeat thread renews its
entries' idle time (``XCLAIM ... JUSTID`` to itself) every ``node.broker_lease_s / 3``; when
it dies, its entries stay idle and, after ``node.broker_lease_s``, another worker takes them
over (``XAUTOCLAIM``), counting the attempt *at that claim*: a job whose processing kills
every worker that takes it is 'failed' with :data:`~mammoxai.node.jobstore.PROCESS_DIED`
after ``node.max_process_attempts`` claims, never passed round for ever. A worker restarting
under the same consumer name (``node.consumer_name``) takes its own entries back at once
(:meth:`RedisJobStore.recover`).

Senders take 'sending' jobs with a lease too (``P:sendq`` score pushed ``node.broker_lease_s``
ahead, renewed by the heartbeat while the delivery lasts), so two workers never deliver one job at
once and a sender that dies mid-delivery has the job delivered by another. Results are deterministic (:mod:`mammoxai.dicom_io.identity`), so the
replays this allows store once in the archive.

Study summaries: ``P:due`` holds each study's last reception time; a worker makes a summary only
after :meth:`RedisJobStore.claim_summary` (``SET NX PX``, re-checking in the same script that the
study is still due, quiet and has nothing waiting or running), so it fires once per quiet study
across all workers.

Not for Redis Cluster (the scripts build key names from the prefix); a single Redis with a replica
(Sentinel) is fine. Connection errors are retried with back-off for about ``BROKER_RETRY_S``
seconds, so a broker restart is ridden out; a script whose reply was lost may run twice, which
at worst counts one more attempt or bumps a revision (documented in the README).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from typing import Any, Iterable

from ..errors import MammoxaiError
from .jobstore import FINAL_STATES, PROCESS_DIED, STATES, Job, JobStore, Recovery

log = logging.getLogger(__name__)

__all__ = ["BROKER_RETRY_S", "BrokerError", "GROUP", "RedisJobStore", "default_consumer_name"]

GROUP = "workers"
#: roughly how long a command is retried while the broker is unreachable (restart, fail-over)
BROKER_RETRY_S = 30.0

_FIELDS = ("id", "kind", "key", "sop_class_uid", "study_uid", "series_uid", "path", "calling_ae", "state",
           "attempts", "send_attempts", "outputs", "error", "timings", "created_at", "updated_at",
           "next_attempt_at", "revision", "worker")
_INTS = {"id", "attempts", "send_attempts", "outputs", "revision"}
_FLOATS = {"created_at", "updated_at", "next_attempt_at"}


class BrokerError(MammoxaiError):
    """The broker cannot be used (unreachable, refused a command) or a job operation is impossible."""


def default_consumer_name() -> str:
    """``HOST-PID``: unique per live process (a container restarting as PID 1 keeps its name, and its jobs)."""
    return f"{socket.gethostname()}-{os.getpid()}"


# Helpers shared by every script. ARGV[1] is the key prefix, ARGV[2] the consumer, ARGV[3] the time (s).
_LUA_HEAD = r"""
local P = ARGV[1]
local ME = ARGV[2]
local NOW = tonumber(ARGV[3])
local G = 'workers'
local function jk(id) return P .. ':job:' .. id end
local function get(id, f) return redis.call('HGET', jk(id), f) end
local function move(id, new)
  local old, kind, study = unpack(redis.call('HMGET', jk(id), 'state', 'kind', 'study_uid'))
  if old then redis.call('ZREM', P .. ':state:' .. old, id) end
  redis.call('ZADD', P .. ':state:' .. new, id, id)
  redis.call('HSET', jk(id), 'state', new, 'updated_at', NOW)
  if kind == 'instance' and study and study ~= '' then
    local was = (old == 'received' or old == 'running')
    local is = (new == 'received' or new == 'running')
    if was and not is then
      if redis.call('HINCRBY', P .. ':active', study, -1) <= 0 then redis.call('HDEL', P .. ':active', study) end
    elseif is and not was then
      redis.call('HINCRBY', P .. ':active', study, 1)
    end
  end
end
local function drop_entry(id)
  local stream, entry = unpack(redis.call('HMGET', jk(id), 'stream', 'entry'))
  if entry and entry ~= '' then
    redis.call('XACK', stream, G, entry)
    redis.call('XDEL', stream, entry)
  end
  redis.call('HSET', jk(id), 'stream', '', 'entry', '')
end
local function enqueue(id)
  local attempts = tonumber(get(id, 'attempts') or '0')
  local stream = P .. ((attempts > 0) and ':retry' or ':work')
  local entry = redis.call('XADD', stream, '*', 'job', id)
  redis.call('HSET', jk(id), 'stream', stream, 'entry', entry)
end
local function merge_timings(id, extra)
  if not extra or extra == '' then return end
  local merged = cjson.decode(get(id, 'timings') or '{}')
  for k, v in pairs(cjson.decode(extra)) do merged[k] = v end
  if next(merged) == nil then return end
  redis.call('HSET', jk(id), 'timings', cjson.encode(merged))
end
local function held_by_me(id)
  return get(id, 'state') == 'running' and get(id, 'worker') == ME
end
"""

_ADD_RECEIVED = r"""
local key, sop_class, study, series, path, calling = ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local timings, state, err = ARGV[10], ARGV[11], ARGV[12]
local id = redis.call('HGET', P .. ':keys', key)
if not id then
  id = tostring(redis.call('INCR', P .. ':seq'))
  redis.call('HSET', jk(id), 'id', id, 'kind', 'instance', 'key', key, 'sop_class_uid', sop_class,
    'study_uid', study, 'series_uid', series, 'path', path, 'calling_ae', calling, 'attempts', 0,
    'send_attempts', 0, 'outputs', 0, 'error', err, 'timings', timings, 'created_at', NOW, 'updated_at', NOW,
    'next_attempt_at', 0, 'revision', 0, 'worker', '', 'stream', '', 'entry', '')
  redis.call('HSET', P .. ':keys', key, id)
  if study ~= '' then redis.call('SADD', P .. ':study:' .. study, id) end
  move(id, state)
  if state == 'received' then enqueue(id) end
else
  redis.call('HINCRBY', jk(id), 'revision', 1)
  local old = get(id, 'state')
  if old ~= 'received' and old ~= 'running' then
    redis.call('HSET', jk(id), 'attempts', 0, 'send_attempts', 0, 'error', err, 'timings', timings, 'path', path,
      'calling_ae', calling, 'next_attempt_at', 0, 'worker', '')
    redis.call('ZREM', P .. ':sendq', id)
    drop_entry(id)
    move(id, state)
    if state == 'received' then enqueue(id) end
  end
end
if state == 'received' and study ~= '' then redis.call('ZADD', P .. ':due', NOW, study) end
return tonumber(id)
"""

# ARGV[4] limit, ARGV[5] lease (ms), ARGV[6] max attempts (0: none). Returns {claimed ids, given-up ids}.
_CLAIM = r"""
local limit, lease, max_attempts = tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
local claimed, given_up = {}, {}
local function forget(stream, entry)
  redis.call('XACK', stream, G, entry)
  redis.call('XDEL', stream, entry)
end
local function start(id)
  redis.call('HINCRBY', jk(id), 'attempts', 1)
  redis.call('HSET', jk(id), 'worker', ME)
  move(id, 'running')
  claimed[#claimed + 1] = tonumber(id)
end
-- which job an entry stands for, if it is still that job's live entry
local function live(stream, e)
  local id = e[2] and e[2][2]
  if id and redis.call('HGET', jk(id), 'entry') == e[1] then return id end
  forget(stream, e[1])
  return nil
end
-- 1. entries whose holder stopped renewing its lease (the worker died): taken over one at a time
-- (the sweep's cursor is kept between calls, so a long pending list is swept in turns, never only its head)
for _, stream in ipairs({P .. ':retry', P .. ':work'}) do
  local cursor_key = P .. ':sweep:' .. stream
  local cursor = redis.call('GET', cursor_key) or '0-0'
  for _ = 1, 50 do
    if #claimed > 0 then break end
    local r = redis.call('XAUTOCLAIM', stream, G, ME, lease, cursor, 'COUNT', 1)
    cursor = r[1]
    for _, e in ipairs(r[2]) do
      local id = live(stream, e)
      if id then
        local state = get(id, 'state')
        if state == 'running' and max_attempts > 0 and tonumber(get(id, 'attempts')) >= max_attempts then
          redis.call('HSET', jk(id), 'error', 'process died while running', 'worker', '')
          drop_entry(id)
          move(id, 'failed')
          given_up[#given_up + 1] = tonumber(id)
        elseif state == 'running' or state == 'received' then
          start(id)
        else
          forget(stream, e[1])
        end
      end
    end
    if cursor == '0-0' then break end
  end
  redis.call('SET', cursor_key, cursor)
end
-- 2. a job tried before, alone; 3. fresh jobs, batched
local function read(stream, count)
  for _ = 1, 50 do
    if #claimed > 0 then return end
    local r = redis.call('XREADGROUP', 'GROUP', G, ME, 'COUNT', count, 'STREAMS', stream, '>')
    if not r then return end
    for _, e in ipairs(r[1][2]) do
      local id = live(stream, e)
      if id then
        if get(id, 'state') == 'received' then start(id) else forget(stream, e[1]) end
      end
    end
  end
end
if #claimed == 0 then read(P .. ':retry', 1) end
if #claimed == 0 then read(P .. ':work', limit) end
return {claimed, given_up}
"""

# ARGV[4..]: job ids held by this process. Renews each entry's idle time; returns the ids no longer ours.
_RENEW = r"""
local lost = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local stream, entry = get(id, 'stream'), get(id, 'entry')
  local ours = held_by_me(id)
  if ours and stream and stream ~= '' then
    local p = redis.call('XPENDING', stream, G, entry, entry, 1)
    ours = (p[1] ~= nil and p[1][2] == ME)
    if ours then redis.call('XCLAIM', stream, G, ME, 0, entry, 'JUSTID') end
  end
  if not ours then lost[#lost + 1] = tonumber(id) end
end
return lost
"""

# ARGV[4] id, ARGV[5] outputs, ARGV[6] timings json. Returns 1, or 0 when the job is no longer ours.
_MARK_SENDING = r"""
local id = ARGV[4]
if not held_by_me(id) then return 0 end
merge_timings(id, ARGV[6])
redis.call('HSET', jk(id), 'outputs', ARGV[5], 'error', '', 'next_attempt_at', 0)
drop_entry(id)
move(id, 'sending')
redis.call('ZADD', P .. ':sendq', 0, id)
return 1
"""

# ARGV[4] id, ARGV[5] new state (done | ignored), ARGV[6] error, ARGV[7] timings json
_MARK_FINAL = r"""
local id = ARGV[4]
if not held_by_me(id) then return 0 end
merge_timings(id, ARGV[7])
redis.call('HSET', jk(id), 'error', ARGV[6])
drop_entry(id)
redis.call('ZREM', P .. ':sendq', id)
move(id, ARGV[5])
return 1
"""

# ARGV[4] id, ARGV[5] error, ARGV[6] max attempts. Returns the new state ('' when the job is no longer ours).
_MARK_FAILED = r"""
local id = ARGV[4]
if not held_by_me(id) then return '' end
redis.call('HSET', jk(id), 'error', ARGV[5])
drop_entry(id)
if tonumber(get(id, 'attempts')) < tonumber(ARGV[6]) then
  move(id, 'received')
  enqueue(id)
  return 'received'
end
move(id, 'failed')
return 'failed'
"""

# ARGV[4] id: a running job of ours goes back without counting its attempt
_REQUEUE = r"""
local id = ARGV[4]
if not held_by_me(id) then return 0 end
local attempts = tonumber(get(id, 'attempts'))
redis.call('HSET', jk(id), 'attempts', math.max(attempts - 1, 0), 'worker', '')
drop_entry(id)
move(id, 'received')
enqueue(id)
return 1
"""

# ARGV[4] id, ARGV[5] reason
_REPROCESS = r"""
local id = ARGV[4]
if redis.call('EXISTS', jk(id)) == 0 then return 0 end
redis.call('HSET', jk(id), 'error', ARGV[5], 'send_attempts', 0, 'worker', '')
redis.call('ZREM', P .. ':sendq', id)
drop_entry(id)
move(id, 'received')
enqueue(id)
return 1
"""

# ARGV[4] max attempts (0: none): this consumer's own pending entries (a previous incarnation died with them)
_RECOVER = r"""
local max_attempts = tonumber(ARGV[4])
local requeued, given_up = 0, {}
for _, stream in ipairs({P .. ':retry', P .. ':work'}) do
  if redis.call('EXISTS', stream) == 1 then
    for _, p in ipairs(redis.call('XPENDING', stream, G, '-', '+', 10000, ME)) do
      local entry = p[1]
      local e = redis.call('XRANGE', stream, entry, entry)
      local id = e[1] and e[1][2][2]
      if id and get(id, 'entry') == entry and get(id, 'state') == 'running' then
        if max_attempts > 0 and tonumber(get(id, 'attempts')) >= max_attempts then
          redis.call('HSET', jk(id), 'error', 'process died while running', 'worker', '')
          drop_entry(id)
          move(id, 'failed')
          given_up[#given_up + 1] = tonumber(id)
        else
          redis.call('HSET', jk(id), 'worker', '')
          drop_entry(id)
          move(id, 'received')
          enqueue(id)
          requeued = requeued + 1
        end
      else
        redis.call('XACK', stream, G, entry)
        redis.call('XDEL', stream, entry)
      end
    end
  end
end
return {requeued, given_up}
"""

# ARGV[4] limit, ARGV[5] lease (s). Due 'sending' jobs, each leased to this sender.
_DUE_FOR_SENDING = r"""
local ids = redis.call('ZRANGEBYSCORE', P .. ':sendq', '-inf', NOW, 'LIMIT', 0, tonumber(ARGV[4]))
for _, id in ipairs(ids) do redis.call('ZADD', P .. ':sendq', NOW + tonumber(ARGV[5]), id) end
return ids
"""

# ARGV[4] id, ARGV[5] revision, ARGV[6] timings json
_FINISH_DELIVERY = r"""
local id = ARGV[4]
if get(id, 'state') ~= 'sending' or get(id, 'revision') ~= ARGV[5] then return 0 end
merge_timings(id, ARGV[6])
redis.call('HSET', jk(id), 'error', '')
redis.call('ZREM', P .. ':sendq', id)
move(id, 'done')
return 1
"""

# ARGV[4] id, ARGV[5] error, ARGV[6] max attempts, ARGV[7] initial back-off, ARGV[8] max back-off
_SEND_FAILED = r"""
local id = ARGV[4]
if get(id, 'state') ~= 'sending' then return get(id, 'state') or '' end
local attempts = tonumber(get(id, 'send_attempts')) + 1
if attempts >= tonumber(ARGV[6]) then
  redis.call('HSET', jk(id), 'send_attempts', attempts, 'error', ARGV[5])
  redis.call('ZREM', P .. ':sendq', id)
  move(id, 'dead')
  return 'dead'
end
local delay = math.min(tonumber(ARGV[8]), tonumber(ARGV[7]) * 2 ^ (attempts - 1))
redis.call('HSET', jk(id), 'send_attempts', attempts, 'error', ARGV[5], 'next_attempt_at', NOW + delay,
  'updated_at', NOW)
redis.call('ZADD', P .. ':sendq', NOW + delay, id)
return 'sending'
"""

# ARGV[4] latest reception time allowed ('+inf' or seconds). Studies due, quiet, nothing waiting or running.
_DUE_SUMMARIES = r"""
local out = {}
for _, study in ipairs(redis.call('ZRANGEBYSCORE', P .. ':due', '-inf', ARGV[4])) do
  if tonumber(redis.call('HGET', P .. ':active', study) or '0') <= 0 then out[#out + 1] = study end
end
return out
"""

# ARGV[4] study, ARGV[5] latest reception time allowed, ARGV[6] lease (ms). 1: this process makes the summary.
_CLAIM_SUMMARY = r"""
local study = ARGV[4]
local last = redis.call('ZSCORE', P .. ':due', study)
if not last or tonumber(last) > tonumber(ARGV[5]) then return 0 end
if tonumber(redis.call('HGET', P .. ':active', study) or '0') > 0 then return 0 end
if redis.call('SET', P .. ':summary:' .. study, ME, 'NX', 'PX', ARGV[6]) then return 1 end
return 0
"""

# ARGV[4] study, ARGV[5] started at
_SUMMARY_MADE = r"""
local study = ARGV[4]
local last = redis.call('ZSCORE', P .. ':due', study)
if last and tonumber(last) <= tonumber(ARGV[5]) then redis.call('ZREM', P .. ':due', study) end
if redis.call('GET', P .. ':summary:' .. study) == ME then redis.call('DEL', P .. ':summary:' .. study) end
return 1
"""

# ARGV[4] study
_ADD_SUMMARY = r"""
local study = ARGV[4]
local key = 'summary:' .. study
local id = redis.call('HGET', P .. ':keys', key)
if not id then
  id = tostring(redis.call('INCR', P .. ':seq'))
  redis.call('HSET', jk(id), 'id', id, 'kind', 'summary', 'key', key, 'sop_class_uid', '', 'study_uid', study,
    'series_uid', '', 'path', '', 'calling_ae', '', 'attempts', 1, 'send_attempts', 0, 'outputs', 0, 'error', '',
    'timings', '{}', 'created_at', NOW, 'updated_at', NOW, 'next_attempt_at', 0, 'revision', 0, 'worker', ME,
    'stream', '', 'entry', '')
  redis.call('HSET', P .. ':keys', key, id)
  redis.call('SADD', P .. ':study:' .. study, id)
else
  redis.call('HINCRBY', jk(id), 'attempts', 1)
  redis.call('HSET', jk(id), 'send_attempts', 0, 'error', '', 'worker', ME)
  redis.call('ZREM', P .. ':sendq', id)
end
move(id, 'running')
return tonumber(id)
"""

# ARGV[4..] ids. Returns {state after, ...} or an error for a job in another state.
_RETRY = r"""
local done = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local state = get(id, 'state')
  if state == 'dead' then
    redis.call('HSET', jk(id), 'send_attempts', 0, 'next_attempt_at', 0, 'error', '')
    move(id, 'sending')
    redis.call('ZADD', P .. ':sendq', 0, id)
  elseif state == 'failed' then
    redis.call('HSET', jk(id), 'attempts', 0, 'error', '', 'worker', '')
    move(id, 'received')
    enqueue(id)
  else
    return redis.error_reply('job ' .. id .. ': state is ' .. tostring(state) ..
      '; only failed or dead jobs can be retried')
  end
  done[#done + 1] = tonumber(id)
end
return done
"""

_POISON = r"""
local n = 0
for _, id in ipairs(redis.call('ZRANGE', P .. ':state:failed', 0, -1)) do
  if get(id, 'error') == 'process died while running' then n = n + 1 end
end
return n
"""

assert PROCESS_DIED == "process died while running"   # spelt out in the scripts above


class RedisJobStore(JobStore):
    """The job store in the Redis at ``url`` (``redis://[:password@]host:port/db``, ``rediss://`` for TLS).

    ``consumer`` names this process in the consumer group (unique per live process; default
    :func:`default_consumer_name`); ``lease_s`` is how long a job (or a delivery, or a study summary)
    held by a process that stopped renewing it stays its own. Thread-safe.
    """

    def __init__(self, url: str, consumer: str | None = None, lease_s: float = 60.0, max_attempts: int = 0,
                 prefix: str = "mammoxai", retry_s: float = BROKER_RETRY_S) -> None:
        import redis
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry

        self.url = url
        self.consumer = consumer or default_consumer_name()
        self.lease_s = float(lease_s)
        self.max_attempts = int(max_attempts)
        self.prefix = prefix
        retries = max(1, int(retry_s / 0.5))
        self._redis = redis.Redis.from_url(
            url, decode_responses=True, socket_connect_timeout=2, socket_timeout=max(10.0, self.lease_s),
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.02), retries),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError, ConnectionError],
            health_check_interval=10, client_name=f"mammoxai:{self.consumer}")
        # /healthz and /metrics ask this one: no retries, short time-outs, so a probe never waits out an outage
        self._probe = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2,
                                           retry=Retry(ExponentialBackoff(), 0))
        self._errors = (redis.RedisError,)
        self._scripts = {name: self._redis.register_script(_LUA_HEAD + body) for name, body in {
            "add_received": _ADD_RECEIVED, "claim": _CLAIM, "renew": _RENEW, "mark_sending": _MARK_SENDING,
            "mark_final": _MARK_FINAL, "mark_failed": _MARK_FAILED, "requeue": _REQUEUE, "reprocess": _REPROCESS,
            "recover": _RECOVER, "due_for_sending": _DUE_FOR_SENDING, "finish_delivery": _FINISH_DELIVERY,
            "send_failed": _SEND_FAILED, "due_summaries": _DUE_SUMMARIES, "claim_summary": _CLAIM_SUMMARY,
            "summary_made": _SUMMARY_MADE, "add_summary": _ADD_SUMMARY, "retry": _RETRY, "poison": _POISON,
        }.items()}
        self._held: set[int] = set()
        self._sending: set[int] = set()   # deliveries in progress here: their send lease is renewed too
        self._held_lock = threading.Lock()
        self._closed = threading.Event()
        self._heartbeat: threading.Thread | None = None
        try:
            self._ensure_groups()
        except self._errors as exc:
            raise BrokerError(f"job store {self.describe()}: cannot reach the broker: {exc}") from None

    # -- plumbing --------------------------------------------------------------------------------
    def describe(self) -> str:
        """The broker's address without credentials."""
        from urllib.parse import urlsplit

        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}{parts.path}"

    def _ensure_groups(self) -> None:
        for stream in ("work", "retry"):
            try:
                self._redis.xgroup_create(f"{self.prefix}:{stream}", GROUP, id="0", mkstream=True)
            except Exception as exc:  # noqa: BLE001 - BUSYGROUP: it exists already
                if "BUSYGROUP" not in str(exc):
                    raise

    def _run(self, name: str, *args: Any) -> Any:
        argv = [self.prefix, self.consumer, repr(time.time()), *map(_arg, args)]
        try:
            return self._scripts[name](args=argv)
        except self._errors as exc:
            if "NOGROUP" in str(exc):   # the broker lost its data (no AOF): start the groups again
                log.error("broker %s has no consumer group (its data was lost?); recreating it", self.describe())
                self._ensure_groups()
                return self._scripts[name](args=argv)
            raise

    def ping(self) -> str:
        """'' when the broker answers, else why not (for /healthz)."""
        try:
            self._probe.ping()
            return ""
        except self._errors as exc:
            return f"broker {self.describe()} unreachable: {exc}"

    def _hold(self, ids: Iterable[int]) -> None:
        with self._held_lock:
            self._held.update(ids)
            if self._held and (self._heartbeat is None or not self._heartbeat.is_alive()):
                self._heartbeat = threading.Thread(target=self._renew_loop, name="mammoxai-lease", daemon=True)
                self._heartbeat.start()

    def _release(self, job_id: int) -> None:
        with self._held_lock:
            self._held.discard(job_id)

    def held_ids(self) -> list[int]:
        """Ids of the jobs this process holds (claimed, not yet recorded)."""
        with self._held_lock:
            return sorted(self._held)

    def renew(self) -> list[int]:
        """Renew the lease of every job this process holds; returns (and forgets) those taken over meanwhile."""
        with self._held_lock:
            sending = sorted(self._sending)
        if sending:
            pipe = self._redis.pipeline(transaction=False)
            for job_id in sending:
                pipe.zadd(f"{self.prefix}:sendq", {str(job_id): time.time() + self.lease_s}, xx=True, gt=True)
            pipe.execute()
        ids = self.held_ids()
        if not ids:
            return []
        lost = [int(i) for i in self._run("renew", *ids)]
        for job_id in lost:
            self._release(job_id)
            log.warning("job %d: lease lost (taken over by another worker after node.broker_lease_s); "
                        "its outcome here is not recorded", job_id)
        return lost

    def _renew_loop(self) -> None:
        while not self._closed.wait(self.lease_s / 3):
            try:
                self.renew()
            except self._errors as exc:
                log.warning("lease renewal failed (broker %s): %s", self.describe(), exc)

    def close(self) -> None:
        """Stop renewing leases and close the connections."""
        self._closed.set()
        self._redis.close()
        self._probe.close()

    # -- receiving -------------------------------------------------------------------------------
    def add_received(self, sop_instance_uid: str, sop_class_uid: str, study_uid: str, series_uid: str,
                     path: Any, calling_ae: str = "", receive_s: float = 0.0,
                     state: str = "received", error: str = "") -> int:
        timings = json.dumps({"receive": round(receive_s, 4)})
        return int(self._run("add_received", sop_instance_uid, sop_class_uid, study_uid, series_uid, str(path),
                             calling_ae, timings, state, error))

    # -- processing ------------------------------------------------------------------------------
    def claim(self, limit: int = 1, worker: str = "") -> list[Job]:
        """Take up to ``limit`` jobs: first one whose holder's lease expired, else one tried before, else fresh ones.

        The attempt is counted in the same script, before the job is processed. A job taken over
        from a dead holder that was claimed ``max_attempts`` times already (the constructor's,
        ``node.max_process_attempts``) is 'failed' with :data:`PROCESS_DIED` instead (0: never).
        """
        max_attempts = self.max_attempts
        claimed, given_up = self._run("claim", max(1, limit), int(self.lease_s * 1000), max_attempts)
        for job_id in given_up:
            log.error("job %s failed: %s %d times (node.max_process_attempts); given up", job_id, PROCESS_DIED,
                      max_attempts)
        ids = [int(i) for i in claimed]
        self._hold(ids)
        return [self.get(i) for i in ids]

    def _mark(self, job_id: int, script: str, *args: Any) -> Any:
        try:
            result = self._run(script, job_id, *args)
        finally:
            self._release(job_id)
        if result in (0, ""):
            log.warning("job %d: no longer held by %s (lease lost); this outcome is left to its new holder",
                        job_id, self.consumer)
        return result

    def requeue(self, job_id: int) -> None:
        self._mark(job_id, "requeue")

    def mark_sending(self, job_id: int, outputs: int, timings: dict[str, float] | None = None) -> None:
        self._mark(job_id, "mark_sending", outputs, _timings(timings))

    def mark_done(self, job_id: int, timings: dict[str, float] | None = None) -> None:
        self._mark(job_id, "mark_final", "done", "", _timings(timings))

    def mark_ignored(self, job_id: int, reason: str, timings: dict[str, float] | None = None) -> None:
        self._mark(job_id, "mark_final", "ignored", reason, _timings(timings))

    def mark_failed(self, job_id: int, error: str, max_attempts: int = 1) -> str:
        state = self._mark(job_id, "mark_failed", error, max_attempts)
        return state or self.get(job_id).state

    def reprocess(self, job_id: int, reason: str) -> None:
        try:
            self._run("reprocess", job_id, reason)
        finally:
            self._deliver([job_id], done=True)

    def recover(self, max_attempts: int | None = None) -> Recovery:
        """At start-up: jobs this consumer name held when its previous process died go back (or are given up).

        Jobs of *other* dead processes are taken over by :meth:`claim` once their lease expires.
        """
        requeued, given_up = self._run("recover", max_attempts or 0)
        return Recovery(requeued=int(requeued), given_up=[int(i) for i in given_up])

    def held(self) -> list[Job]:
        """The jobs this process holds ('running'), e.g. to put back at a graceful stop."""
        return [j for j in (self.find_id(i) for i in self.held_ids()) if j is not None and j.state == "running"]

    # -- delivering ------------------------------------------------------------------------------
    def due_for_sending(self, now: float | None = None, limit: int = 16) -> list[Job]:
        """'sending' jobs whose back-off has expired, each leased to this sender for ``lease_s``."""
        ids = self._run("due_for_sending", limit, self.lease_s)
        jobs = [j for j in (self.find_id(int(i)) for i in ids) if j is not None and j.state == "sending"]
        self._deliver([j.id for j in jobs])
        return jobs

    def _deliver(self, ids: Iterable[int], done: bool = False) -> None:
        with self._held_lock:
            (self._sending.difference_update if done else self._sending.update)(ids)
            if self._sending and (self._heartbeat is None or not self._heartbeat.is_alive()):
                self._heartbeat = threading.Thread(target=self._renew_loop, name="mammoxai-lease", daemon=True)
                self._heartbeat.start()

    def finish_delivery(self, job_id: int, revision: int, timings: dict[str, float] | None = None) -> bool:
        try:
            return bool(self._run("finish_delivery", job_id, revision, _timings(timings)))
        finally:
            self._deliver([job_id], done=True)

    def send_failed(self, job_id: int, error: str, max_attempts: int, backoff_initial_s: float,
                    backoff_max_s: float) -> str:
        try:
            return str(self._run("send_failed", job_id, error, max_attempts, backoff_initial_s, backoff_max_s))
        finally:
            self._deliver([job_id], done=True)

    # -- study summaries -------------------------------------------------------------------------
    def due_summaries(self, quiet_s: float, now: float | None = None) -> list[str]:
        return list(self._run("due_summaries", _latest(quiet_s, now)))

    def claim_summary(self, study_uid: str, worker: str = "", quiet_s: float = 0.0) -> bool:
        """Whether this process makes the study's summary now: still due, quiet for ``quiet_s``, nothing waiting
        or running, and no other process making it (held for ``lease_s``, released by :meth:`summary_made`)."""
        return bool(self._run("claim_summary", study_uid, _latest(quiet_s, None), int(self.lease_s * 1000)))

    def summary_made(self, study_uid: str, started_at: float | None = None) -> None:
        self._run("summary_made", study_uid, time.time() if started_at is None else started_at)

    def add_summary(self, study_uid: str) -> int:
        job_id = int(self._run("add_summary", study_uid))
        self._hold([job_id])
        return job_id

    # -- queries ---------------------------------------------------------------------------------
    def find_id(self, job_id: int) -> Job | None:
        """The job with this id, or None."""
        data = self._redis.hgetall(f"{self.prefix}:job:{job_id}")
        return _to_job(data) if data else None

    def get(self, job_id: int) -> Job:
        job = self.find_id(job_id)
        if job is None:
            raise BrokerError(f"job {job_id}: no such job")
        return job

    def find(self, key: str) -> Job | None:
        job_id = self._redis.hget(f"{self.prefix}:keys", key)
        return None if job_id is None else self.find_id(int(job_id))

    def _jobs(self, ids: Iterable[Any]) -> list[Job]:
        pipe = self._redis.pipeline(transaction=False)
        ids = list(ids)
        for job_id in ids:
            pipe.hgetall(f"{self.prefix}:job:{job_id}")
        return [_to_job(d) for d in pipe.execute() if d]

    def list(self, states: Iterable[str] | None = None, study_uid: str | None = None) -> list[Job]:
        if states is not None:
            states = list(states)
            unknown = [s for s in states if s not in STATES]
            if unknown:
                raise BrokerError(f"unknown job state(s) {unknown}; known: {', '.join(STATES)}")
        if study_uid is not None:
            ids = {int(i) for i in self._redis.smembers(f"{self.prefix}:study:{study_uid}")}
        else:
            ids = set()
            for state in (states or STATES):
                ids.update(int(i) for i in self._redis.zrange(f"{self.prefix}:state:{state}", 0, -1))
        jobs = self._jobs(sorted(ids))
        return [j for j in jobs if states is None or j.state in states]

    def counts(self) -> dict[str, int]:
        pipe = self._redis.pipeline(transaction=False)
        for state in STATES:
            pipe.zcard(f"{self.prefix}:state:{state}")
        return dict(zip(STATES, (int(n) for n in pipe.execute())))

    def retry(self, job_ids: Iterable[int]) -> list[int]:
        ids = list(job_ids)
        if not ids:
            return []
        for job_id in ids:
            self.get(job_id)
        try:
            return [int(i) for i in self._run("retry", *ids)]
        except self._errors as exc:
            raise BrokerError(str(exc)) from None

    def oldest_waiting_age(self, now: float | None = None) -> float:
        now = time.time() if now is None else now
        first = self._redis.zrange(f"{self.prefix}:state:received", 0, 0)
        if not first:
            return 0.0
        created = self._redis.hget(f"{self.prefix}:job:{first[0]}", "created_at")
        return 0.0 if created is None else max(0.0, now - float(created))

    def stuck(self, older_than_s: float, now: float | None = None) -> list[Job]:
        """Jobs *this process* has been running for longer than ``older_than_s`` (another's are its own health)."""
        now = time.time() if now is None else now
        return [j for j in self.held() if j.updated_at < now - older_than_s]

    def poison_count(self) -> int:
        return int(self._run("poison"))

    def worker_of(self, job_id: int) -> str:
        """The consumer holding a running job ('' when none)."""
        return self._redis.hget(f"{self.prefix}:job:{job_id}", "worker") or ""


def _arg(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def _timings(timings: dict[str, float] | None) -> str:
    return json.dumps({k: round(float(v), 4) for k, v in (timings or {}).items()})


def _latest(quiet_s: float, now: float | None) -> str:
    """The latest last-reception time of a study quiet for ``quiet_s`` at ``now``, as a ZRANGEBYSCORE bound."""
    limit = (time.time() if now is None else now) - quiet_s
    return "+inf" if limit == float("inf") else repr(limit)


def _to_job(data: dict[str, str]) -> Job:
    values: dict[str, Any] = {}
    for name in _FIELDS:
        raw = data.get(name, "")
        if name in _INTS:
            values[name] = int(float(raw or 0))
        elif name in _FLOATS:
            values[name] = float(raw or 0)
        elif name == "timings":
            values[name] = json.loads(raw or "{}") if raw not in ("", "[]") else {}
        else:
            values[name] = raw
    return Job(**values)


assert set(FINAL_STATES) <= set(STATES)
