"""RedisJobStore semantics against a real redis-server: claim, ack, lease expiry, poison jobs, summaries once.

Two stores with different consumer names stand for two worker processes. Lease expiry is observed,
not slept through: the test polls the broker until the entry's idle time passes the lease.
"""

from __future__ import annotations

import time

import pytest
import redis

from mammoxai.config import Settings
from mammoxai.node.jobstore import PROCESS_DIED, open_job_store
from mammoxai.node.queue import JobQueue
from mammoxai.node.redis_store import BrokerError, RedisJobStore

LEASE_S = 0.5


def store(server, name: str, lease_s: float = LEASE_S, max_attempts: int = 3) -> RedisJobStore:
    return RedisJobStore(server.url, consumer=name, lease_s=lease_s, max_attempts=max_attempts)


def add(s: RedisJobStore, i: int, study: str = "1.2.3") -> int:
    return s.add_received(f"1.2.826.{i}", "1.2.840.10008.5.1.4.1.1.1.2", study, "1.2.4", f"/spool/{i}.dcm", "SCU")


def wait_lease_expired(server, job_id: int, lease_s: float = LEASE_S) -> None:
    """Poll until the job's stream entry has been idle longer than the lease (the holder stopped renewing)."""
    client = redis.Redis(port=server.port, decode_responses=True)
    stream, entry = client.hmget(f"mammoxai:job:{job_id}", "stream", "entry")
    deadline = time.monotonic() + 10
    while True:
        pending = client.xpending_range(stream, "workers", min=entry, max=entry, count=1)
        if pending and pending[0]["time_since_delivered"] > lease_s * 1000:
            return
        assert time.monotonic() < deadline, "the lease never expired"
        time.sleep(0.05)


def test_claim_counts_the_attempt_and_batches_only_fresh_jobs(redis_server):
    a = store(redis_server, "a")
    ids = [add(a, i) for i in range(3)]
    assert a.counts()["received"] == 3
    jobs = a.claim(limit=2)
    assert [j.id for j in jobs] == ids[:2]
    assert all(j.state == "running" and j.attempts == 1 and j.worker == "a" for j in jobs)
    assert a.counts()["running"] == 2 and a.counts()["received"] == 1
    # a job tried before (failed once, attempts left) goes to the retry stream and is claimed alone, first
    assert a.mark_failed(ids[0], "boom", max_attempts=3) == "received"
    again = a.claim(limit=4)
    assert [j.id for j in again] == [ids[0]] and again[0].attempts == 2
    a.close()


def test_ack_after_staging_removes_the_entry_and_the_sender_finishes(redis_server):
    a = store(redis_server, "a")
    job_id = add(a, 1)
    [job] = a.claim(limit=1)
    a.mark_sending(job.id, 3, {"predict": 1.5})
    client = redis.Redis(port=redis_server.port, decode_responses=True)
    assert client.xpending("mammoxai:work", "workers")["pending"] == 0       # acknowledged
    assert client.xlen("mammoxai:work") == 0                                  # and deleted
    [due] = a.due_for_sending()
    assert due.id == job_id and due.outputs == 3 and due.timings["predict"] == 1.5
    assert a.due_for_sending() == []                # leased to this sender: another does not take it too
    assert a.finish_delivery(job_id, due.revision, {"send": 0.1})
    assert a.get(job_id).state == "done" and a.get(job_id).timings["send"] == 0.1
    a.close()


def test_a_dead_workers_job_is_taken_over_after_the_lease(redis_server):
    a, b = store(redis_server, "a"), store(redis_server, "b")
    job_id = add(a, 1)
    assert [j.id for j in a.claim()] == [job_id]
    assert b.claim() == []                              # held by a, lease not expired
    a._closed.set()                                     # "a" dies: no more renewals
    wait_lease_expired(redis_server, job_id)
    [taken] = b.claim()
    assert taken.id == job_id and taken.worker == "b" and taken.attempts == 2
    # the dead holder's late outcome is not recorded; the new holder's is
    a.mark_sending(job_id, 1)
    assert b.get(job_id).state == "running"
    b.mark_sending(job_id, 1)
    assert b.get(job_id).state == "sending"
    a.close()
    b.close()


def test_renewed_leases_are_not_taken_over(redis_server):
    a, b = store(redis_server, "a"), store(redis_server, "b")
    job_id = add(a, 1)
    a.claim()
    client = redis.Redis(port=redis_server.port, decode_responses=True)
    entry = client.hget(f"mammoxai:job:{job_id}", "entry")
    deadline = time.monotonic() + 10
    while True:   # through several lease periods, the heartbeat keeps it a's
        assert b.claim() == []
        idle = client.xpending_range("mammoxai:work", "workers", min=entry, max=entry, count=1)[0]
        assert idle["consumer"] == "a" and idle["time_since_delivered"] < LEASE_S * 1000 + 300
        if time.monotonic() > deadline - 8:
            break
        time.sleep(0.05)
    assert a.get(job_id).worker == "a"
    a.close()
    b.close()


def test_a_job_that_kills_every_holder_is_given_up_after_max_attempts(redis_server):
    stores = [store(redis_server, f"w{i}", max_attempts=2) for i in range(3)]
    job_id = add(stores[0], 1)
    assert stores[0].claim()[0].attempts == 1
    stores[0]._closed.set()                                 # dies with it
    wait_lease_expired(redis_server, job_id)
    assert stores[1].claim()[0].attempts == 2
    stores[1]._closed.set()                                 # dies with it again
    wait_lease_expired(redis_server, job_id)
    assert stores[2].claim() == []                          # not a third time
    job = stores[2].get(job_id)
    assert job.state == "failed" and job.error == PROCESS_DIED
    assert stores[2].poison_count() == 1
    assert stores[2].retry([job_id]) == [job_id] and stores[2].get(job_id).state == "received"
    for s in stores:
        s.close()


def test_recover_returns_the_jobs_of_a_previous_process_with_the_same_name(redis_server):
    a = store(redis_server, "host-1", max_attempts=2)
    ids = [add(a, i) for i in range(2)]
    a.claim(limit=2)
    a._closed.set()
    again = store(redis_server, "host-1", max_attempts=2)    # the same container restarted
    recovery = again.recover(max_attempts=2)
    assert recovery.requeued == 2 and recovery.given_up == []
    assert [j.attempts for j in again.claim()] == [2]       # tried before: claimed alone
    again._closed.set()
    third = store(redis_server, "host-1", max_attempts=2)
    recovery = third.recover(max_attempts=2)
    assert recovery.given_up == [ids[0]] and third.get(ids[0]).error == PROCESS_DIED
    for s in (a, again, third):
        s.close()


def test_requeue_at_a_graceful_stop_does_not_count_the_attempt(redis_server):
    a = store(redis_server, "a")
    job_id = add(a, 1)
    a.claim()
    assert [j.id for j in a.held()] == [job_id]
    a.requeue(job_id)
    job = a.get(job_id)
    assert job.state == "received" and job.attempts == 0 and a.held() == []
    assert [j.id for j in a.claim()] == [job_id]
    a.close()


def test_summaries_fire_once_per_quiet_study_across_workers(redis_server):
    a, b = store(redis_server, "a"), store(redis_server, "b")
    study = "1.2.999"
    ids = [add(a, i, study) for i in range(2)]
    assert a.due_summaries(0.0) == []                   # instances waiting: not yet
    for job in a.claim(limit=2):
        a.mark_sending(job.id, 1)
    assert a.due_summaries(3600.0) == []                # not quiet for an hour
    assert a.due_summaries(0.0) == b.due_summaries(0.0) == [study]
    assert a.claim_summary(study, quiet_s=0.0)
    assert not b.claim_summary(study, quiet_s=0.0)      # a makes it
    started = time.time()
    summary = a.add_summary(study)
    a.mark_sending(summary, 1)
    a.summary_made(study, started)
    assert not b.claim_summary(study, quiet_s=0.0)      # made: no longer due
    assert a.due_summaries(0.0) == []
    # a new instance of the study makes it due again
    add(a, 7, study)
    assert a.due_summaries(0.0) == []
    [job] = b.claim()
    b.mark_done(job.id)
    assert b.claim_summary(study, quiet_s=0.0)
    assert sorted(j.id for j in a.list(study_uid=study) if j.kind == "instance") == sorted([*ids, job.id])
    a.close()
    b.close()


def test_re_reception_while_sending_is_processed_again_and_the_old_delivery_not_finished(redis_server):
    a = store(redis_server, "a")
    job_id = add(a, 1)
    a.claim()
    a.mark_sending(job_id, 1)
    [due] = a.due_for_sending()
    assert add(a, 1) == job_id                        # the same instance again
    assert not a.finish_delivery(job_id, due.revision)
    job = a.get(job_id)
    assert job.state == "received" and job.revision == due.revision + 1
    a.close()


def test_send_failures_back_off_then_dead_and_retry(redis_server):
    a = store(redis_server, "a")
    job_id = add(a, 1)
    a.claim()
    a.mark_sending(job_id, 1)
    a.due_for_sending()
    assert a.send_failed(job_id, "down", 2, 100.0, 100.0) == "sending"
    assert a.due_for_sending() == []                   # backing off
    assert a.send_failed(job_id, "down", 2, 100.0, 100.0) == "dead"
    assert a.failed_count() == 1
    assert a.retry([job_id]) == [job_id]
    assert [j.id for j in a.due_for_sending()] == [job_id]
    with pytest.raises(BrokerError, match="only failed or dead"):
        a.retry([job_id])
    a.close()


def test_jobs_survive_a_broker_crash(redis_server):
    a = store(redis_server, "a")
    ids = [add(a, i) for i in range(3)]
    a.claim(limit=1)
    a.close()
    redis_server.kill()                               # SIGKILL: no shutdown save; the AOF (fsync always) has it
    redis_server.start()
    b = store(redis_server, "b")
    assert b.counts()["received"] == 2 and b.counts()["running"] == 1
    assert [j.id for j in b.claim(limit=4)] == ids[1:]
    b.close()


def test_settings_choose_the_store(redis_server, tmp_path):
    """node.job_store, node.broker_url, node.consumer_name and node.broker_lease_s each have their effect."""
    default = open_job_store(Settings(), tmp_path / "q.sqlite")
    assert isinstance(default, JobQueue)
    default.close()
    settings = Settings(node={"job_store": "redis", "broker_url": redis_server.url, "consumer_name": "named",
                              "broker_lease_s": 7.5, "max_process_attempts": 5})
    s = open_job_store(settings, tmp_path / "unused.sqlite")
    assert isinstance(s, RedisJobStore)
    assert (s.consumer, s.lease_s, s.max_attempts) == ("named", 7.5, 5)
    add(s, 1)
    assert s.claim()[0].worker == "named"
    s.close()
    with pytest.raises(BrokerError, match="cannot reach"):
        RedisJobStore(f"redis://127.0.0.1:{redis_server.port + 1 if redis_server.port < 65535 else 1}/0",
                      retry_s=0.5)


def test_a_long_delivery_keeps_its_send_lease_and_a_dead_senders_is_taken_over(redis_server):
    a, b = store(redis_server, "a"), store(redis_server, "b")
    job_id = add(a, 1)
    a.claim()
    a.mark_sending(job_id, 1)
    [due] = a.due_for_sending()
    client = redis.Redis(port=redis_server.port, decode_responses=True)
    first = client.zscore("mammoxai:sendq", job_id)
    deadline = time.monotonic() + 10
    while client.zscore("mammoxai:sendq", job_id) <= first:    # the heartbeat pushes the lease on
        assert time.monotonic() < deadline, "the send lease was never renewed"
        time.sleep(0.05)
    assert b.due_for_sending() == []
    a._closed.set()                                               # the sender dies mid-delivery
    deadline = time.monotonic() + 10
    while not (taken := b.due_for_sending()):
        assert time.monotonic() < deadline, "the delivery was never taken over"
        time.sleep(0.05)
    assert [j.id for j in taken] == [job_id]
    assert b.finish_delivery(job_id, due.revision)
    a.close()
    b.close()
