"""Server resources under load: CPU seconds per delivered message and peak RSS of a server the
harness runs, sampled with psutil in a thread for the length of a load run.

The server's process and every child it forks are sampled (children by their parent, so a worker
that starts mid-run is found); CPU is what each process used since the first sample, a process
that ended keeps what it had used when last seen. Read into the load summary as::

    "server_resources": {"pid": 4242, "cpu_s": 1.93, "peak_rss_bytes": 61865984,
                         "deliveries": 4000, "cpu_s_per_delivery": 0.000483, "reason": null}

With a server the harness does not run (a `url` endpoint) every number is null and `reason`
says why.
"""

from __future__ import annotations

import threading
from typing import Any

import psutil

from harness.timing import units

SAMPLE_EVERY_UNITS = 0.1  # between samples, in time units


class ResourceSampler:
    """Samples one server process tree until `stop()`; `part()` is the summary's entry."""

    def __init__(self, pid: int, *, every_s: float | None = None) -> None:
        self.pid = pid
        self.every_s = units(SAMPLE_EVERY_UNITS) if every_s is None else every_s
        self.peak_rss = 0
        self.samples = 0
        self.problem = ""
        self._start_cpu: dict[int, float] = {}  # pid -> CPU seconds at its first sample
        self._last_cpu: dict[int, float] = {}  # pid -> CPU seconds at its latest sample
        self._procs: dict[int, psutil.Process] = {}
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<ResourceSampler pid {self.pid}: {self.samples} samples, {self.cpu_s:.3f} cpu s>"

    def start(self) -> ResourceSampler:
        """Take the first sample now (the baseline), then keep sampling in a daemon thread."""
        try:
            self._procs[self.pid] = psutil.Process(self.pid)
        except psutil.Error as exc:
            self.problem = f"server pid {self.pid} could not be sampled: {exc}"
            return self
        self.sample()
        self._thread = threading.Thread(target=self._loop, name="im-harness-resources",
                                        daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._halt.wait(self.every_s):
            self.sample()

    def sample(self) -> None:
        """One sample of the tree: CPU of each process, RSS of all of them together."""
        with self._lock:
            root = self._procs.get(self.pid)
            if root is None:
                return
            try:
                for child in root.children(recursive=True):
                    self._procs.setdefault(child.pid, child)
            except psutil.Error:
                pass  # the root ended: the processes already known are still read
            rss = 0
            for pid, proc in list(self._procs.items()):
                try:
                    with proc.oneshot():
                        times = proc.cpu_times()
                        memory = proc.memory_info().rss
                except psutil.Error:
                    del self._procs[pid]  # ended: its last CPU reading stays counted
                    continue
                cpu = times.user + times.system
                # at the baseline: what it had used before; forked later: all of it is the run's
                self._start_cpu.setdefault(pid, cpu if self.samples == 0 else 0.0)
                self._last_cpu[pid] = cpu
                rss += memory
            self.peak_rss = max(self.peak_rss, rss)
            self.samples += 1

    @property
    def pids(self) -> list[int]:
        """Every process of the tree sampled so far (the server and the children it forked)."""
        return sorted(self._last_cpu)

    @property
    def cpu_s(self) -> float:
        """CPU seconds (user + system) the tree used since the first sample."""
        return sum(cpu - self._start_cpu.get(pid, 0.0) for pid, cpu in self._last_cpu.items())

    def stop(self) -> ResourceSampler:
        """Take a last sample and end the thread."""
        self._halt.set()
        if self._thread is not None:
            self._thread.join(timeout=max(1.0, 5 * self.every_s))
        self.sample()
        return self

    def part(self, deliveries: int) -> dict[str, Any]:
        """The summary's `server_resources` entry for a run that delivered `deliveries`."""
        if self.problem or not self.samples:
            return absent(self.problem or f"server pid {self.pid} was never sampled",
                          deliveries, pid=self.pid)
        cpu = round(self.cpu_s, 4)
        return {"pid": self.pid, "cpu_s": cpu, "peak_rss_bytes": self.peak_rss,
                "deliveries": deliveries,
                "cpu_s_per_delivery": round(cpu / deliveries, 9) if deliveries else None,
                "samples": self.samples, "reason": None}


def absent(reason: str, deliveries: int | None = None, *, pid: int | None = None
           ) -> dict[str, Any]:
    """The entry when nothing was measured: every number null, and why."""
    return {"pid": pid, "cpu_s": None, "peak_rss_bytes": None, "deliveries": deliveries,
            "cpu_s_per_delivery": None, "samples": 0, "reason": reason}


def finish_sampling(sampler: ResourceSampler | str, deliveries: int) -> dict[str, Any]:
    """Stop `sampler` and give its entry, or the entry of the reason there was none."""
    if isinstance(sampler, ResourceSampler):
        return sampler.stop().part(deliveries)
    return absent(sampler, deliveries)


def sample_server(name: str, server: Any | None) -> ResourceSampler | str:
    """A started sampler for endpoint `name`'s server, or the reason there is none."""
    if server is None:
        return (f"endpoint {name!r} is not run by the harness (a url endpoint): its server's "
                "resources are not measured")
    pid = getattr(server, "pid", None)
    if not isinstance(pid, int):
        return f"endpoint {name!r}: its server ({type(server).__name__}) reports no pid"
    return ResourceSampler(pid).start()
