"""The DICOM node: receive mammograms, queue them durably, process them, send the results back.

Flow (one module each)::

    PACS --C-STORE--> scp.StorageSCP --spool.Spool (fsync + rename)--> queue.JobQueue (SQLite WAL)
         <--Success--                                                     |
    worker.Worker: claim a batch -> its own Pipeline.outcomes (UIDs: dicom_io.identity) -> Spool.stage_outputs
    worker.Sender: staged outputs -> scu.Destination (C-STORE SCU | STOW-RS | folder), back-off, dead letter
    server.Node: all of the above + metrics.HttpServer (/healthz, /metrics), SIGTERM = graceful

Loop prevention (our own results are never processed) is in :mod:`mammoxai.dicom_io.triage`; DICOM TLS and the
source-address filter in :mod:`.security`; the Orthanc configuration and auto-routing Lua script
shared by the integration tests and ``docker/`` in :mod:`.orthanc`. The ``serve``, ``send``, ``echo`` and ``jobs``
commands that drive this package are in :mod:`mammoxai.commands`.

More than one machine: ``node.job_store = "redis"`` puts the jobs on a broker (:mod:`.redis_store`, Redis
Streams with a consumer group) and ``serve --role scp|worker`` splits the node into one receiving process
and any number of worker processes on a shared spool (:mod:`.spool`).

Exactly-once delivery: each step is durable before the next, a crash replays at most the last step,
and replays produce the same SOP Instance UIDs (derived from the source instance), which an archive
stores once.
"""
