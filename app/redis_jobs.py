"""Cluster mode's job store: the jobs, their states and their audio in Redis, so every HTTP node sees every job.

A job is a hash; the states are sorted sets (queued by arrival, processing by lease deadline, finished by
time); every change of state is one Lua script, so it is atomic however many nodes race for it. A node that
claims a job holds a lease on it, renewed while it runs: a node killed mid-job stops renewing, and any node
puts the job back in the queue once the lease has run out (at once, when the same node starts again). A
claim carries a token, and only its holder can finish the job: a job runs to its end exactly once.
The audio is kept as 16 kHz mono FLAC (app.audio.compact) in chunks, so any node can run any job.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from contextlib import suppress
from pathlib import Path
from typing import Any

from app import audio, broker
from app.errors import QueueFull
from app.jobs import MAX_ATTEMPTS, Job
from app.outputs import now_iso
from app.protocol.native import FINISHED, JobState, TranscribeOptions

log = logging.getLogger(__name__)

# A node renews the leases of the jobs it runs every few seconds; one not renewed for this long is taken back.
LEASE_SECONDS = 30.0
# A queued job's audio is kept at most this long (a job still queued after a week is failed for want of it).
AUDIO_TTL = 7 * 24 * 3600
# The audio is stored in pieces of this size: no single Redis value nears its 512 MB limit.
CHUNK_BYTES = 8 * 1024**2
# A finished job's record outlives its retention by this much, in case no node is up to delete it on time.
EXPIRY_MARGIN = 24 * 3600

_QUEUED, _PROCESSING = JobState.QUEUED.value, JobState.PROCESSING.value
_FINISHED_STATES = tuple(state.value for state in FINISHED)

_CREATE = """
if tonumber(ARGV[1]) >= 0 and redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[1]) then return 0 end
local seq = redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[1], 'seq', seq, unpack(ARGV, 3))
redis.call('ZADD', KEYS[2], seq, ARGV[2])
return 1
"""
# Lease deadlines are Redis' own clock (TIME), so nodes whose clocks disagree cannot take each other's jobs.
_NOW = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
"""
# KEYS: queued, processing; ARGV: started_at, lease seconds, token, node, job key prefix. Returns the claimed
# job's fields (in the same call, so a claim is never made without the job reaching its runner).
_CLAIM = (
    _NOW
    + """
while true do
  local popped = redis.call('ZPOPMIN', KEYS[1])
  if #popped == 0 then return false end
  local job = ARGV[5] .. popped[1]
  if redis.call('HGET', job, 'status') == 'queued' then
    redis.call('HSET', job, 'status', 'processing', 'started_at', ARGV[1], 'segments_done', 0,
               'claim', ARGV[3], 'node', ARGV[4])
    redis.call('HINCRBY', job, 'attempts', 1)
    redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), popped[1])
    return redis.call('HGETALL', job)
  end
end
"""
)
# The job is still processing under this claim (an empty token: whoever holds it).
_HELD = """
local function held(job, token)
  if redis.call('HGET', job, 'status') ~= 'processing' then return false end
  return token == '' or redis.call('HGET', job, 'claim') == token
end
"""
# KEYS: job, processing; ARGV: token, lease seconds, id
_RENEW = (
    _HELD
    + _NOW
    + """
if not held(KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[2], 'XX', now + tonumber(ARGV[2]), ARGV[3])
return 1
"""
)
# KEYS: job; ARGV: token, field, value, ...
_UPDATE = (
    _HELD
    + """
if not held(KEYS[1], ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return 1
"""
)
# KEYS: job, processing, finished set, audio; ARGV: token, id, score, expiry seconds (0: none), field, value, ...
_FINISH = (
    _HELD
    + """
if not held(KEYS[1], ARGV[1]) then
  -- A replay (the client resent the call after losing its reply) of the finish that already landed.
  if redis.call('HGET', KEYS[1], 'finished_by') == ARGV[1] then return 1 end
  return 0
end
redis.call('HSET', KEYS[1], 'finished_by', ARGV[1], unpack(ARGV, 5))
if redis.call('HGET', KEYS[1], 'status') == 'completed' then
  redis.call('HSET', KEYS[1], 'segments_done', redis.call('HGET', KEYS[1], 'segments_total') or 0)
end
redis.call('HDEL', KEYS[1], 'claim')
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
redis.call('DEL', KEYS[4])
if tonumber(ARGV[4]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[4]) end
return 1
"""
)
# KEYS: job, processing, queued; ARGV: token, id, attempts to give back
_REQUEUE = (
    _HELD
    + """
if not held(KEYS[1], ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'status', 'queued', 'segments_done', 0)
if ARGV[3] ~= '0' then redis.call('HINCRBY', KEYS[1], 'attempts', -tonumber(ARGV[3])) end
redis.call('HDEL', KEYS[1], 'claim')
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], redis.call('HGET', KEYS[1], 'seq'), ARGV[2])
return 1
"""
)
# Taking back a job whose node stopped: KEYS: job, processing, queued, failed, audio; ARGV: id, node ('' for any),
# max attempts, completed_at, score, expiry seconds, reason. Only a lease that ran out (by Redis' clock) or a
# job of the given node (started again) is taken; checked here, so a renewal cannot slip in between.
# Returns 'requeued', 'failed' or false.
_TAKE_BACK = (
    _NOW
    + """
local deadline = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not deadline then return false end
if redis.call('HGET', KEYS[1], 'status') ~= 'processing' then
  redis.call('ZREM', KEYS[2], ARGV[1])  -- its record is gone (expired) or it ended: nothing to take back
  return false
end
if tonumber(deadline) > now and redis.call('HGET', KEYS[1], 'node') ~= ARGV[2] then return false end
redis.call('HDEL', KEYS[1], 'claim')
redis.call('ZREM', KEYS[2], ARGV[1])
if tonumber(redis.call('HGET', KEYS[1], 'attempts') or 0) >= tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], 'status', 'failed', 'completed_at', ARGV[4], 'error', ARGV[7])
  redis.call('ZADD', KEYS[4], ARGV[5], ARGV[1])
  redis.call('DEL', KEYS[5])
  if tonumber(ARGV[6]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[6]) end
  return 'failed'
end
redis.call('HSET', KEYS[1], 'status', 'queued', 'segments_done', 0)
redis.call('ZADD', KEYS[3], redis.call('HGET', KEYS[1], 'seq'), ARGV[1])
return 'requeued'
"""
)
# KEYS: job, queued, processing, cancelled, audio; ARGV: completed_at, score, id, expiry seconds
_CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'queued' and status ~= 'processing' then return false end
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'completed_at', ARGV[1], 'error', 'cancelled by the client')
redis.call('HDEL', KEYS[1], 'claim')
redis.call('ZREM', KEYS[2], ARGV[3])
redis.call('ZREM', KEYS[3], ARGV[3])
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[3])
redis.call('DEL', KEYS[5])
if tonumber(ARGV[4]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[4]) end
return status
"""
# KEYS: job, completed, failed, cancelled, audio; ARGV: id
_DELETE = """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'completed' and status ~= 'failed' and status ~= 'cancelled' then
  if not status then
    for i = 2, 4 do redis.call('ZREM', KEYS[i], ARGV[1]) end
  end
  return false
end
local row = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[5])
for i = 2, 4 do redis.call('ZREM', KEYS[i], ARGV[1]) end
return row
"""


def node_id(data_dir: Path) -> str:
    """This node's lasting name, kept in its data dir: a node started again on it recognises its own jobs."""
    path = data_dir / "node-id"
    with suppress(FileNotFoundError):
        found = path.read_text().strip()
        if found:
            return found
    made = uuid.uuid4().hex[:12]
    path.write_text(made + "\n")
    return made


class RedisJobStore:
    """The JobStore's interface on Redis; the runner's claims are held under leases (see the module)."""

    lease_seconds = LEASE_SECONDS

    def __init__(self, client: Any, node: str, *, retention_seconds: float = 0, max_audio_seconds: float | None = None):
        self._redis = client
        self.node = node
        self._expiry = int(retention_seconds + EXPIRY_MARGIN) if retention_seconds > 0 else 0
        self._max_audio_seconds = max_audio_seconds
        self._scripts = {
            name: client.register_script(body)
            for name, body in (
                ("create", _CREATE),
                ("claim", _CLAIM),
                ("renew", _RENEW),
                ("update", _UPDATE),
                ("finish", _FINISH),
                ("requeue", _REQUEUE),
                ("take_back", _TAKE_BACK),
                ("cancel", _CANCEL),
                ("delete", _DELETE),
            )
        }

    # Keys ---------------------------------------------------------------------------------------------

    @staticmethod
    def _job(job_id: str) -> str:
        return broker.key("job", job_id)

    @staticmethod
    def _audio(job_id: str) -> str:
        return broker.key("job", job_id, "audio")

    @staticmethod
    def _state(state: str) -> str:
        return broker.key("jobs", state)

    def _run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        with broker.reachable("the job store"):
            return self._scripts[name](keys=keys, args=args)

    # The JobStore interface ---------------------------------------------------------------------------

    def create(
        self,
        job_id: str,
        options: TranscribeOptions,
        audio_path: Path,
        *,
        owner: str | None = None,
        max_queued: int | None = None,
        name: str | None = None,
        request_id: str | None = None,
    ) -> None:
        """Store the audio (as FLAC) and a queued job; QueueFull if max_queued are waiting."""
        compacted = audio_path.with_name(audio_path.name + ".flac")
        stored = self._audio(job_id)
        try:
            audio.compact(audio_path, compacted, self._max_audio_seconds)
            with broker.reachable("storing the job's audio"), compacted.open("rb") as source:
                self._redis.delete(stored)
                while chunk := source.read(CHUNK_BYTES):
                    # Each piece with the time to live: audio stored by a node killed halfway still expires.
                    pipe = self._redis.pipeline(transaction=True)
                    pipe.rpush(stored, chunk)
                    pipe.expire(stored, AUDIO_TTL)
                    pipe.execute()
        finally:
            compacted.unlink(missing_ok=True)
        fields: dict[str, Any] = {
            "id": job_id,
            "status": _QUEUED,
            "options": json.dumps(options.to_dict()),
            "audio_path": str(audio_path),
            "created_at": now_iso(),
            "segments_done": 0,
            "segments_total": 0,
            "attempts": 0,
            "owner": owner,
            "name": name,
            "request_id": request_id,
        }
        flat = [item for pair in fields.items() if pair[1] is not None for item in pair]
        try:
            created = self._run(
                "create",
                [self._job(job_id), self._state(_QUEUED), broker.key("jobs", "seq")],
                [-1 if max_queued is None else max_queued, job_id, *flat],
            )
        except BaseException:
            with suppress(Exception):
                self._redis.delete(stored)
            raise
        if not created:
            with broker.reachable("the job store"):
                self._redis.delete(stored)
            raise QueueFull(f"{max_queued} jobs are already queued; try again later", retry_after=60)

    def get(self, job_id: str) -> Job | None:
        """The job, or None."""
        with broker.reachable("the job store"):
            row = self._redis.hgetall(self._job(job_id))
        return _job(row) if row else None

    def queue_position(self, job_id: str) -> int | None:
        """Where a queued job stands: 1 for the next one to start; None when it is not queued."""
        with broker.reachable("the job store"):
            rank = self._redis.zrank(self._state(_QUEUED), job_id)
        return None if rank is None else int(rank) + 1

    def claim_next(self) -> Job | None:
        """Atomically move the oldest queued job to processing under a lease held by this node; the Job carries
        the claim, which every later write for this run names."""
        row = self._run(
            "claim",
            [self._state(_QUEUED), self._state(_PROCESSING)],
            [now_iso(), LEASE_SECONDS, uuid.uuid4().hex, self.node, broker.key("job", "")],
        )
        return _job(dict(zip(row[::2], row[1::2], strict=True))) if row else None

    def renew(self, job_id: str, claim: str | None = None) -> bool:
        """Extend the lease of this claim; False once it no longer holds the job (cancelled, taken back)."""
        if claim is None:
            return False
        return bool(self._run("renew", [self._job(job_id), self._state(_PROCESSING)], [claim, LEASE_SECONDS, job_id]))

    def set_progress(self, job_id: str, done: int, total: int, claim: str | None = None) -> None:
        """Record how many segments are finished (only while the claim holds the job)."""
        self._update(job_id, claim, segments_done=done, segments_total=total)

    def set_output_file(self, job_id: str, output_file: str, claim: str | None = None) -> None:
        """Record the output name reserved for the running job."""
        self._update(job_id, claim, output_file=output_file)

    def _update(self, job_id: str, claim: str | None, **fields: Any) -> None:
        if claim is not None:
            flat = [item for pair in fields.items() for item in pair]
            self._run("update", [self._job(job_id)], [claim, *flat])

    def complete(self, job_id: str, result: dict[str, Any], output_file: str, claim: str | None = None) -> bool:
        """Mark the job done with its result; False if the claim no longer holds it (cancelled, taken back)."""
        fields = {"result": json.dumps(result), "output_file": output_file}
        return self._finish(job_id, claim, JobState.COMPLETED.value, **fields)

    def fail(self, job_id: str, error: str, claim: str | None = None) -> None:
        """Mark the job failed with the reason (a cancelled one stays cancelled)."""
        self._finish(job_id, claim, JobState.FAILED.value, error=error)

    def _finish(self, job_id: str, claim: str | None, state: str, **fields: Any) -> bool:
        if claim is None:
            return False
        flat = [item for pair in {"status": state, "completed_at": now_iso(), **fields}.items() for item in pair]
        return bool(
            self._run(
                "finish",
                [self._job(job_id), self._state(_PROCESSING), self._state(state), self._audio(job_id)],
                [claim, job_id, time.time(), self._expiry, *flat],
            )
        )

    def requeue(self, job_id: str, *, count_attempt: bool = True, claim: str | None = None) -> None:
        """Put the running job back in its place in the queue; the attempt may be uncounted."""
        if claim is not None:
            keys = [self._job(job_id), self._state(_PROCESSING), self._state(_QUEUED)]
            self._run("requeue", keys, [claim, job_id, 0 if count_attempt else 1])

    def cancel(self, job_id: str) -> str | None:
        """Cancel a queued or running job; returns the status it had, or None if it had already finished."""
        keys = [
            self._job(job_id),
            self._state(_QUEUED),
            self._state(_PROCESSING),
            self._state(JobState.CANCELLED.value),
            self._audio(job_id),
        ]
        previous = self._run("cancel", keys, [now_iso(), time.time(), job_id, self._expiry])
        return previous.decode() if previous else None

    def delete(self, job_id: str) -> Job | None:
        """Remove a finished job; returns it, or None when there is none or it has not finished."""
        keys = [self._job(job_id), *(self._state(s) for s in _FINISHED_STATES), self._audio(job_id)]
        row = self._run("delete", keys, [job_id])
        if not row:
            return None
        return _job(dict(zip(row[::2], row[1::2], strict=True)))

    def finished_before(self, cutoff: str) -> list[str]:
        """Ids of jobs that finished before the ISO time cutoff."""
        from datetime import datetime

        score = datetime.fromisoformat(cutoff).timestamp()
        with broker.reachable("the job store"):
            found = [self._redis.zrangebyscore(self._state(s), "-inf", f"({score}") for s in _FINISHED_STATES]
        return [member.decode() for members in found for member in members]

    def recover(self) -> list[str]:
        """At start: take back this node's own jobs (it died running them) and any whose lease ran out."""
        return self._take_back(own=True)

    def reclaim(self) -> list[str]:
        """Take back the jobs of nodes that stopped renewing their leases (called every few seconds)."""
        return self._take_back(own=False)

    def _take_back(self, *, own: bool) -> list[str]:
        """Requeue the jobs found (failing those interrupted MAX_ATTEMPTS times); the ids requeued."""
        with broker.reachable("the job store"):
            if own:
                candidates = self._redis.zrange(self._state(_PROCESSING), 0, -1)
            else:
                candidates = self._redis.zrangebyscore(self._state(_PROCESSING), "-inf", self._now())
        requeued = []
        for member in candidates:
            job_id = member.decode()
            keys = [
                self._job(job_id),
                self._state(_PROCESSING),
                self._state(_QUEUED),
                self._state(JobState.FAILED.value),
                self._audio(job_id),
            ]
            reason = f"the service stopped while running this job {MAX_ATTEMPTS} times"
            args = [job_id, self.node if own else "", MAX_ATTEMPTS, now_iso(), time.time(), self._expiry, reason]
            if self._run("take_back", keys, args) == b"requeued":
                requeued.append(job_id)
        return requeued

    def _now(self) -> float:
        """Redis' clock, which the leases are measured by."""
        with broker.reachable("the job store"):
            seconds, micros = self._redis.time()
        return float(seconds) + float(micros) / 1e6

    def counts(self) -> dict[str, int]:
        """Number of jobs per status."""
        with broker.reachable("the job store"):
            pipe = self._redis.pipeline(transaction=False)
            for state in JobState:
                pipe.zcard(self._state(state.value))
            found = pipe.execute()
        return {state.value: int(n) for state, n in zip(JobState, found, strict=True)}

    def fetch_audio(self, job_id: str, target: Path) -> bool:
        """Write the job's stored audio to target; False when none is stored (it expired or was deleted)."""
        with broker.reachable("the job store"):
            count = self._redis.llen(self._audio(job_id))
            if not count:
                return False
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + f".{os.getpid()}.part")
            with partial.open("wb") as out:
                for index in range(count):
                    chunk = self._redis.lindex(self._audio(job_id), index)
                    if chunk is None:
                        partial.unlink(missing_ok=True)
                        return False
                    out.write(chunk)
            partial.replace(target)
        return True


def _job(row: dict[bytes, bytes]) -> Job:
    """A Job from its hash."""
    data = {k.decode(): v.decode() for k, v in row.items()}

    def number(name: str) -> int:
        return int(data.get(name) or 0)

    return Job(
        id=data["id"],
        status=data["status"],
        options=TranscribeOptions.from_dict(json.loads(data["options"])),
        audio_path=data["audio_path"],
        created_at=data["created_at"],
        started_at=data.get("started_at"),
        completed_at=data.get("completed_at"),
        segments_done=number("segments_done"),
        segments_total=number("segments_total"),
        attempts=number("attempts"),
        result=json.loads(data["result"]) if data.get("result") else None,
        output_file=data.get("output_file"),
        error=data.get("error"),
        owner=data.get("owner"),
        name=data.get("name"),
        request_id=data.get("request_id"),
        claim=data.get("claim"),
    )
