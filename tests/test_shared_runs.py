"""The machinery behind the session's shared runs (tests/shared_runs.py), on plans that only record their calls."""

import threading

import pytest

from tests.conftest import SHARED_RUNS
from tests.shared_runs import Plan, SharedRuns


class Request:
    """The two things SharedRuns asks of pytest's request: tmp_path_factory, and nothing else."""

    def __init__(self, tmp_path_factory):
        self.tmp_path_factory = tmp_path_factory

    def getfixturevalue(self, name):
        assert name == "tmp_path_factory"
        return self.tmp_path_factory


def recording_plans(calls: list, release: threading.Event):
    def call(name):
        def invoked(environ):
            release.wait(10)
            calls.append((name, threading.current_thread().name, environ["WHO"]))
            return name.upper()

        return invoked

    def first(workdir, request):
        return Plan([call("first a"), call("first b")], lambda procs: (workdir.name, procs))

    def second(workdir, request):
        return Plan([call("second")], lambda procs: procs)

    def broken(workdir, request):
        raise ValueError("no such input")

    return {"first": first, "second": second, "broken": broken}


def test_runs_are_made_in_the_worker_in_the_order_started_with_the_environment_given(tmp_path_factory):
    calls, release = [], threading.Event()
    runs = SharedRuns(recording_plans(calls, release), Request(tmp_path_factory), lambda: {"WHO": "session"})
    runs.start("second")
    runs.start("first")
    runs.start("second")  # once
    assert calls == []  # queued, waiting in the worker
    release.set()
    workdir, procs = runs.result("first")
    assert workdir.startswith("first") and procs == ["FIRST A", "FIRST B"]
    assert runs.result("second") == ["SECOND"]
    assert [name for name, _, _ in calls] == ["second", "first a", "first b"]
    assert {thread for _, thread, _ in calls} != {threading.current_thread().name}
    assert {who for _, _, who in calls} == {"session"}
    runs.close()


def test_a_plan_that_fails_fails_its_readers_not_the_start(tmp_path_factory):
    runs = SharedRuns(recording_plans([], threading.Event()), Request(tmp_path_factory), dict)
    runs.start("broken")  # the session's start goes on
    with pytest.raises(ValueError, match="no such input"):
        runs.result("broken")
    runs.close()


def test_the_session_queues_the_runs_its_tests_read(request):
    """This session queued (or made) the runs its collected tests read, in the order of SHARED_RUNS."""
    from tests.conftest import SHARED_RUN_ORDER

    order = request.config.stash[SHARED_RUN_ORDER]
    assert order == [name for name in SHARED_RUNS if name in order]
    readers = [item for item in request.session.items if set(item.fixturenames) & set(order)]
    last_read = [max(order.index(n) for n in item.fixturenames if n in order) for item in readers]
    assert last_read == sorted(last_read)
    assert request.session.items[len(request.session.items) - len(readers) :] == readers
