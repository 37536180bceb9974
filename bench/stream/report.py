"""The tables of ``bench stream``: one run's sessions, and a sweep's session counts."""

from __future__ import annotations

import statistics

from rich.table import Table

from emolive.bench.report import fmt
from emolive.bench.stream.measure import RunResult, percentile


def session_table(run: RunResult, size: int, seconds: float, motion: str) -> Table:
    """Every session of ``run`` and all of them together."""
    n = len(run.sessions)
    webrtc = run.transport == "webrtc"
    title = (f"emolive bench stream — {n} session{'s' if n > 1 else ''}, {size}², transport={run.transport}, "
             f"motion={motion}, {seconds:.0f} s window")
    table = Table(title=title, caption=f"CPU {run.cpu_pct_per_session:.0f}% of one core per session (server process)"
                  + (f"; client process {run.client_cpu_pct:.0f}% total" if webrtc else "")
                  + f"; load avg {run.loadavg}")
    table.add_column("session", justify="right")
    table.add_column("fps", justify="right")
    if webrtc:
        table.add_column("client fps", justify="right")
    table.add_column("dropped", justify="right")
    if webrtc:
        table.add_column("lost", justify="right")
    table.add_column("turns", justify="right")
    table.add_column("latency p50 ms", justify="right")
    table.add_column("p95 ms", justify="right")
    table.add_column("turn start p50", justify="right")
    if webrtc:
        table.add_column("sent p50 ms", justify="right")
        table.add_column("sent p95 ms", justify="right")
        table.add_column("client p50 ms", justify="right")
        table.add_column("client p95 ms", justify="right")
        table.add_column("track→client ms", justify="right")
    table.add_column("underruns", justify="right")
    if not webrtc:
        table.add_column("compute ms", justify="right")
    table.add_column("sync errors", justify="right")
    for i, s in enumerate(run.sessions):
        row = [str(i + 1), fmt(s.fps)]
        if webrtc:
            row.append(fmt(s.client_fps))
        row.append(str(s.dropped))
        if webrtc:
            row.append(str(s.lost))
        row += [str(s.turns), fmt(percentile(s.lat_ms, 50)), fmt(percentile(s.lat_ms, 95)),
                fmt(percentile(s.turn_lat_ms, 50))]
        if webrtc:
            row += [fmt(percentile(s.sent_lat_ms, 50)), fmt(percentile(s.sent_lat_ms, 95)),
                    fmt(percentile(s.client_lat_ms, 50)), fmt(percentile(s.client_lat_ms, 95)),
                    fmt(percentile(s.transport_ms, 50))]
        row += [str(s.underruns)] + ([] if webrtc else [fmt(s.compute_ms, 2)]) + [str(s.mismatches)]
        table.add_row(*row, style="red" if (s.client_fps if webrtc else s.fps) < 24 else None)
    all_lat = [x for s in run.sessions for x in s.lat_ms]
    all_turn = [x for s in run.sessions for x in s.turn_lat_ms]
    row = ["all", fmt(statistics.median(s.fps for s in run.sessions))]
    if webrtc:
        row.append(fmt(statistics.median(s.client_fps for s in run.sessions)))
    row.append(str(sum(s.dropped for s in run.sessions)))
    if webrtc:
        row.append(str(sum(s.lost for s in run.sessions)))
    row += [str(sum(s.turns for s in run.sessions)), fmt(percentile(all_lat, 50)), fmt(percentile(all_lat, 95)),
            fmt(percentile(all_turn, 50))]
    if webrtc:
        all_sent = [x for s in run.sessions for x in s.sent_lat_ms]
        all_client = [x for s in run.sessions for x in s.client_lat_ms]
        row += [fmt(percentile(all_sent, 50)), fmt(percentile(all_sent, 95)),
                fmt(percentile(all_client, 50)), fmt(percentile(all_client, 95)),
                fmt(percentile([x for s in run.sessions for x in s.transport_ms], 50))]
    row += [str(sum(s.underruns for s in run.sessions))]
    if not webrtc:
        row.append(fmt(statistics.median(s.compute_ms for s in run.sessions), 2))
    row.append(str(sum(s.mismatches for s in run.sessions)))
    table.add_row(*row, style="bold", end_section=True)
    return table


def sweep_table(runs: list[RunResult], size: int, seconds: float, transport: str, motion: str) -> Table:
    """One row per session count of a sweep."""
    table = Table(title=f"emolive bench stream --sweep — {size}², transport={transport}, "
                        f"motion={motion}, {seconds:.0f} s per step")
    for column in ("sessions", "min fps", "median fps", "dropped", "latency p50 ms", "p95 ms", "CPU % / session",
                   "CPU % total", "compute ms", "load avg"):
        table.add_column(column, justify="right")
    for run in runs:
        fps = [s.client_fps if run.transport == "webrtc" else s.fps for s in run.sessions]
        lat = [x for s in run.sessions for x in s.lat_ms]
        table.add_row(str(len(run.sessions)), fmt(min(fps)), fmt(statistics.median(fps)),
                      str(sum(s.dropped for s in run.sessions)), fmt(percentile(lat, 50)), fmt(percentile(lat, 95)),
                      fmt(run.cpu_pct_per_session, 0), fmt(run.cpu_pct_per_session * len(run.sessions), 0),
                      fmt(statistics.median(s.compute_ms for s in run.sessions), 2), run.loadavg,
                      style=None if min(fps) >= 24 else "red")
    return table
