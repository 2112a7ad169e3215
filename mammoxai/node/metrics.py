"""Prometheus metrics (text exposition format 0.0.4, written by hand) and the /healthz + /metrics HTTP server."""

from __future__ import annotations

import http.server
import logging
import sys
import threading
from collections.abc import Callable, Sequence

log = logging.getLogger(__name__)

#: job latency buckets (seconds from reception to delivery)
LATENCY_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in sorted(labels.items())) + "}"


class Metrics:
    """Counters, one latency histogram, and gauges computed at scrape time. Thread-safe."""

    def __init__(self, buckets: Sequence[float] = LATENCY_BUCKETS) -> None:
        self._lock = threading.Lock()
        self._counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._help: dict[str, str] = {}
        self.buckets = tuple(sorted(buckets))
        self._hist_counts = [0] * len(self.buckets)
        self._hist_sum = 0.0
        self._hist_n = 0
        self._gauges: list[Callable[[], list[tuple[str, dict[str, str], float]]]] = []

    def inc(self, name: str, value: float = 1.0, help: str = "", **labels: str) -> None:
        """Add ``value`` to counter ``name`` (``mammoxai_`` prefix and ``_total`` suffix added)."""
        key = (f"mammoxai_{name}_total", tuple(sorted(labels.items())))
        with self._lock:
            self._counters[key] = self._counters.get(key, 0.0) + value
            if help:
                self._help[key[0]] = help

    def counter(self, name: str, **labels: str) -> float:
        """The current value of a counter (0 when never incremented)."""
        with self._lock:
            return self._counters.get((f"mammoxai_{name}_total", tuple(sorted(labels.items()))), 0.0)

    def observe_latency(self, seconds: float) -> None:
        """Record one job's latency in ``mammoxai_job_latency_seconds``."""
        with self._lock:
            for i, bound in enumerate(self.buckets):
                if seconds <= bound:
                    self._hist_counts[i] += 1
            self._hist_sum += seconds
            self._hist_n += 1

    def add_gauges(self, fn: Callable[[], list[tuple[str, dict[str, str], float]]]) -> None:
        """Register ``fn`` returning ``(name, labels, value)`` gauges, evaluated at each scrape."""
        self._gauges.append(fn)

    def render(self) -> str:
        """The Prometheus text exposition of every metric."""
        lines: list[str] = []
        with self._lock:
            seen: set[str] = set()
            for (name, labels), value in sorted(self._counters.items()):
                if name not in seen:
                    seen.add(name)
                    lines.append(f"# HELP {name} {self._help.get(name, name)}")
                    lines.append(f"# TYPE {name} counter")
                lines.append(f"{name}{_labels(dict(labels))} {value:g}")
            h = "mammoxai_job_latency_seconds"
            lines += [f"# HELP {h} seconds from reception of an instance to delivery of its results",
                      f"# TYPE {h} histogram"]
            for bound, count in zip(self.buckets, self._hist_counts):
                lines.append(f'{h}_bucket{{le="{bound:g}"}} {count}')
            lines += [f'{h}_bucket{{le="+Inf"}} {self._hist_n}', f"{h}_sum {self._hist_sum:g}",
                      f"{h}_count {self._hist_n}"]
        gauges: dict[str, list[str]] = {}
        for fn in self._gauges:
            try:
                for name, labels, value in fn():
                    gauges.setdefault(name, []).append(f"{name}{_labels(labels)} {value:g}")
            except Exception as exc:  # a broken gauge must not break the scrape
                log.warning("metrics gauge failed: %s", exc)
        for name, samples in gauges.items():
            lines += [f"# TYPE {name} gauge"] + samples
        return "\n".join(lines) + "\n"


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


class HttpServer:
    """``/healthz`` (200 "ok" while ``healthy()`` is true, else 503) and ``/metrics`` on a local port, in a thread."""

    def __init__(self, host: str, port: int, metrics: Metrics, healthy: Callable[[], bool] = lambda: True) -> None:
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - stdlib name
                if self.path.split("?")[0] == "/healthz":
                    ok = outer.healthy()
                    body, code, ctype = (b"ok\n" if ok else b"unhealthy\n"), (200 if ok else 503), "text/plain"
                elif self.path.split("?")[0] == "/metrics":
                    body, code = outer.metrics.render().encode(), 200
                    ctype = "text/plain; version=0.0.4; charset=utf-8"
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
        self.healthy = healthy
        self._server = http.server.ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="mammoxai-http", daemon=True)

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
