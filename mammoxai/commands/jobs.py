"""``mammoxai jobs [list|failed|show|retry] [IDS...] [--all-failed]``: inspect the queue, re-send failed jobs.

Works while the server runs (SQLite WAL: readers and one writer at a time), and against the broker
with ``node.job_store = "redis"`` (every worker's jobs); a re-queued job is picked up by the running
server or workers, or by the next ``mammoxai serve`` / ``serve --once``.
"""

from __future__ import annotations

import argparse
import json

from ..config import Settings

HELP = "list jobs; re-send failed ones"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", nargs="?", choices=["list", "failed", "retry", "show"], default="list")
    p.add_argument("job_ids", nargs="*", type=int)
    p.add_argument("--all-failed", action="store_true", help="with retry: every failed/dead job")


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Print jobs (``list``: all; ``failed``: failed and dead; ``show``: full rows) or re-queue them (``retry``)."""
    from ..node.jobstore import open_job_store
    from ..node.queue import QueueError
    from ..node.spool import Spool

    if settings.node.job_store == "redis":
        from ..node.redis_store import default_consumer_name

        settings.node.consumer_name = f"jobs-cli-{default_consumer_name()}"   # holds nothing, never claims
        queue = open_job_store(settings, "")
    else:
        queue = open_job_store(settings, Spool(settings.node.spool_dir).database)
    try:
        action = args.action
        ids = list(args.job_ids or [])
        if action == "retry":
            if getattr(args, "all_failed", False):
                ids += [j.id for j in queue.list(["failed", "dead"])]
            if not ids:
                raise QueueError("jobs retry: name job ids or use --all-failed")
            done = queue.retry(sorted(set(ids)))
            print(f"re-queued {len(done)} job(s): {' '.join(map(str, done))}")
            return 0
        if action == "show":
            if not ids:
                raise QueueError("jobs show: name at least one job id")
            for job_id in ids:
                print(json.dumps(queue.get(job_id).__dict__, indent=2, default=str))
            return 0
        jobs = queue.list(["failed", "dead"] if action == "failed" else None)
        if ids:
            jobs = [j for j in jobs if j.id in ids]
        for job in jobs:
            print(job.describe())
        counts = queue.counts()
        print("total: " + ", ".join(f"{s}={n}" for s, n in counts.items()))
        return 0
    finally:
        queue.close()
