"""The real ``emolive serve`` in a subprocess, for the long-run benches, and what /proc and
/metrics say about it. Started as a user starts it (``python -m cli.main serve``), so the
benches measure the server a stranger runs: its own uvicorn, event loop and render workers.
"""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

_LISTENING = re.compile(r"Uvicorn running on (http://\S+:\d+)")


@dataclass
class ProcessSample:
    """One look at the server process tree."""

    at: float  # seconds since the server started listening
    rss_server_mb: float
    rss_workers_mb: float  # every child of the server: render workers, multiprocessing's resource tracker
    fds: int  # open descriptors of the server process
    workers: list[int]  # render worker pids
    metrics: dict[str, float]  # the gauges /metrics had (an empty dict when it did not answer)

    @property
    def rss_mb(self) -> float:
        return self.rss_server_mb + self.rss_workers_mb


class ServerProcess:
    """``with ServerProcess(data_dir, log_path, loop="auto") as srv: srv.url``."""

    def __init__(self, data_dir: Path, log_path: Path, loop: str = "auto", extra: tuple[str, ...] = ()) -> None:
        self.command = [sys.executable, "-m", "emolive.cli.main", "serve", "--port", "0", "--data-dir", str(data_dir),
                        "--ice-loopback", "--loop", loop, *extra]
        self.log_path = log_path
        self.url = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = math.nan

    def start(self, timeout: float = 180.0) -> ServerProcess:
        # The log goes to a file, not a pipe: nobody has to keep reading it for the server to go on.
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not self.url:
            found = _LISTENING.search(self.log())
            if found:
                self.url = found.group(1)
            elif self.proc.poll() is not None:
                raise RuntimeError(f"emolive serve exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            elif time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"emolive serve did not listen within {timeout:.0f} s:\n{self.log()[-3000:]}")
            else:
                time.sleep(0.1)
        self.started_at = time.monotonic()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def ws_url(self) -> str:
        return "ws" + self.url[4:]

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (uvicorn's graceful shutdown), then SIGKILL; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        children = child_pids(self.pid)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        for pid in children:  # workers of a server that was killed are orphans: do not leave them behind
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------------ measuring

    def render_workers(self) -> list[int]:
        """The server's render worker processes (multiprocessing ``spawn`` children)."""
        return [pid for pid in child_pids(self.pid) if "spawn_main" in _cmdline(pid)]

    def metrics(self) -> dict[str, float]:
        """Unlabelled gauges and counters from /metrics, plus labelled ones summed; {} if it did not answer."""
        import httpx
        from prometheus_client.parser import text_string_to_metric_families

        try:
            text = httpx.get(f"{self.url}/metrics", timeout=10).text
        except httpx.HTTPError:
            return {}
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.endswith(("_created", "_bucket")):
                    continue
                out[sample.name] = out.get(sample.name, 0.0) + float(sample.value)
        return out

    def sample(self) -> ProcessSample:
        children = child_pids(self.pid)
        return ProcessSample(
            at=time.monotonic() - self.started_at, rss_server_mb=rss_mb(self.pid),
            rss_workers_mb=sum(rss_mb(pid) for pid in children), fds=open_fds(self.pid),
            workers=[pid for pid in children if "spawn_main" in _cmdline(pid)], metrics=self.metrics())


_EXCEPTION = re.compile(r"^[\w.]+(Error|Exception|Exit)\b")


def log_errors(log: str) -> list[str]:
    """The server's ERROR lines, each with the exception it ends in (a traceback's last line)."""
    lines = log.splitlines()
    out = []
    for i, line in enumerate(lines):
        if " ERROR " in line or " CRITICAL " in line or line.startswith(("ERROR", "CRITICAL")):
            cause = next((x for x in lines[i + 1 : i + 60] if _EXCEPTION.match(x)), "")
            out.append(f"{line.strip()}{' — ' + cause.strip() if cause else ''}")
    return out


def child_pids(parent: int) -> list[int]:
    """Direct children of ``parent``, from /proc."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent:
            out.append(int(entry))
    return sorted(out)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` in MB; 0 for a process that is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024.0
    except (OSError, StopIteration):
        return 0.0


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1

