"""The session's shared workflow runs, made in the background while the tests that do not read them go on.

Most of the suite's time is its workflow runs (tests/runs.py), and on a small machine a run keeps its two cores
busy only part of the time, as most tests do. So once the tests are collected, those that read a shared run go last
(ordered by the last run they wait for), and the runs they read start at once, one after another in a worker
thread, the longest first (the order of SHARED_RUNS in tests/conftest.py). What a run needs from this process is
made in the main thread before any test starts: its folder, its config and input files, and the environment of its
processes (the session's, copied before a test could change os.environ). The worker thread only waits on
Snakemake's processes, so nothing a test does in this process (a seed, a patched variable) reaches a run, and the
runs are the same runs as when a fixture made them in its turn."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple


class Plan(NamedTuple):
    """A shared run: its Snakemake invocations, each a callable taking the environment as `environ` and returning
    the CompletedProcess, and `finish`, which makes the fixture's value of their CompletedProcesses."""

    calls: list[Callable]
    finish: Callable[[list], object]


class SharedRuns:
    """The plans {fixture name: plan(workdir, request) -> Plan}, started in a worker thread in the order asked."""

    def __init__(self, plans: dict[str, Callable[[Path, object], Plan]], request, environ: Callable[[], dict]):
        self.plans, self.request, self.environ = plans, request, environ
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shared run")
        self.started: dict[str, tuple[Plan, Future]] = {}
        self.values: dict[str, object] = {}

    def start(self, name: str) -> None:
        """Writes the run's inputs here and now, and queues its invocations (once). A plan that fails fails the
        tests that read its run, not the session."""
        if name not in self.started:
            workdir = self.request.getfixturevalue("tmp_path_factory").mktemp(name)
            try:
                plan = self.plans[name](workdir, self.request)
            except Exception as exc:
                failed = Future()
                failed.set_exception(exc)
                self.started[name] = Plan([], lambda procs: None), failed
            else:
                self.started[name] = plan, self.worker.submit(self.invoke, plan.calls)

    def invoke(self, calls: list[Callable]) -> list:
        environ = self.environ()  # in the worker: it may wait for the session's scontrol probe
        return [call(environ=environ) for call in calls]

    def result(self, name: str):
        """The fixture's value, once the run has ended (started now if nothing queued it)."""
        if name not in self.values:
            self.start(name)
            plan, future = self.started[name]
            self.values[name] = plan.finish(future.result())
        return self.values[name]

    def close(self) -> None:
        self.worker.shutdown(wait=False, cancel_futures=True)
