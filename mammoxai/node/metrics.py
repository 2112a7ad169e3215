"""Prometheus metrics (the maintained ``prometheus-client`` library: its registry, types and text exposition)
and the /healthz + /metrics HTTP server."""

from __future__ import annotations

import http.server
import logging
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

log = logging.getLogger(__name__)

disable_created_metrics()   # no *_created series: the node exports counts, not their creation times

#: job latency buckets (seconds from reception to delivery)
LATENCY_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800)

GaugeFn = Callable[[], list[tuple[str, dict[str, str], float]]]


class _Gauges:
    """A collector turning ``(name, labels, value)`` callbacks into gauge families at each scrape."""

    def __init__(self) -> None:
        self.functions: list[GaugeFn] = []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families: dict[str, tuple[list[str], list[tuple[list[str], float]]]] = {}
        for fn in list(self.functions):
            try:
                samples = fn()
            except Exception as exc:  # a broken gauge must not break the scrape
                log.warning("metrics gauge failed: %s", exc)
                continue
            for name, labels, value in samples:
                keys, rows = families.setdefault(name, (sorted(labels), []))
                rows.append(([str(labels.get(k, "")) for k in keys], float(value)))
        for name, (keys, rows) in families.items():
            family = GaugeMetricFamily(name, name.removeprefix("mammoxai_").replace("_", " "), labels=keys)
            for values, value in rows:
                family.add_metric(values, value)
            yield family


class Metrics:
    """Counters, one latency histogram, and gauges computed at scrape time, in one registry. Thread-safe."""

    def __init__(self, buckets: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._lock = threading.Lock()
        self._counters: dict[str, Counter] = {}
        self.buckets = tuple(sorted(buckets))
        self._latency = Histogram("mammoxai_job_latency_seconds",
                                  "seconds from reception of an instance to delivery of its results",
                                  buckets=self.buckets, registry=self.registry)
        self._gauges = _Gauges()
        self.registry.register(self._gauges)

    def _counter(self, name: str, labels: Sequence[str], help: str) -> Counter:
        full = f"mammoxai_{name}"
        with self._lock:
            counter = self._counters.get(full)
            if counter is None:
                counter = Counter(full, help or full, labelnames=tuple(sorted(labels)), registry=self.registry)
                self._counters[full] = counter
            return counter

    def inc(self, name: str, value: float = 1.0, help: str = "", **labels: str) -> None:
        """Add ``value`` to counter ``name`` (exposed as ``mammoxai_NAME_total``); a counter keeps its label names."""
        counter = self._counter(name, list(labels), help)
        (counter.labels(**labels) if labels else counter).inc(value)

    def counter(self, name: str, **labels: str) -> float:
        """The current value of a counter (0 when never incremented)."""
        value = self.registry.get_sample_value(f"mammoxai_{name}_total", labels)
        return float(value or 0.0)

    def observe_latency(self, seconds: float) -> None:
        """Record one job's latency in ``mammoxai_job_latency_seconds``."""
        self._latency.observe(seconds)

    def add_gauges(self, fn: GaugeFn) -> None:
        """Register ``fn`` returning ``(name, labels, value)`` gauges, evaluated at each scrape."""
        self._gauges.functions.append(fn)

    def render(self) -> str:
        """The Prometheus text exposition (format 0.0.4) of every metric."""
        return generate_latest(self.registry).decode("utf-8")


def gpu_memory_gauges() -> list[tuple[str, dict[str, str], float]]:
    """CUDA memory allocated/reserved per device, when torch is loaded and a GPU is present (else none)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        out.append(("mammoxai_gpu_memory_allocated_bytes", {"device": str(i)}, float(torch.cuda.memory_allocated(i))))
        out.append(("mammoxai_gpu_memory_reserved_bytes", {"device": str(i)}, float(torch.cuda.memory_reserved(i))))
    return out


Health = tuple[str, list[str]]


class HttpServer:
    """``/healthz`` and ``/metrics`` on a local port, in a thread.

    ``health()`` returns ``(state, reasons)``: ``"ok"`` answers 200 ``ok``; ``"degraded"`` (the node runs
    but needs an operator: disk, destination, stuck or poison jobs) and ``"unhealthy"`` (a thread died,
    stopping) answer 503 with the state and one reason per line. A callable returning a bool is accepted
    too (True = ok).
    """

    def __init__(self, host: str, port: int, metrics: Metrics,
                 health: Callable[[], Health | bool] = lambda: True) -> None:
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - stdlib name
                if self.path.split("?")[0] == "/healthz":
                    state, reasons = outer.health_state()
                    body = (f"{state}\n" + "".join(f"{r}\n" for r in reasons)).encode()
                    code, ctype = (200 if state == "ok" else 503), "text/plain; charset=utf-8"
                elif self.path.split("?")[0] == "/metrics":
                    body, code = outer.metrics.render().encode(), 200
                    ctype = CONTENT_TYPE_PLAIN_0_0_4
                else:
                    body, code, ctype = b"not found\n", 404, "text/plain"
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("http: " + format, *args)

        self.metrics = metrics
        self.health = health
        self._server = http.server.ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="mammoxai-http", daemon=True)

    def health_state(self) -> Health:
        """``(state, reasons)`` from the health callable (a failing callable is 'unhealthy')."""
        try:
            value: Any = self.health()
        except Exception as exc:  # noqa: BLE001 - the probe itself must answer
            return "unhealthy", [f"health check failed: {type(exc).__name__}: {exc}"]
        if isinstance(value, bool):
            return ("ok", []) if value else ("unhealthy", [])
        return value

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread.start()
        log.info("metrics on http://%s:%d/metrics", self._server.server_address[0], self.port)

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
