"""The supervisor's one hook for chaos: kill a role with its whole process group and start
the same role again; a role killed on purpose is not a failure."""

import os

import psutil
import pytest

from tracerl.supervisor import Supervisor, wait_for

pytestmark = [pytest.mark.nats]


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_restart_kills_the_process_group_and_runs_the_same_role_again(tmp_path):
    supervisor = Supervisor(tmp_path)
    args = ["bus", "--set", f"run.run_dir={tmp_path}", "--set", "port=0", "--set", "monitor_port=0"]
    first = supervisor.start("bus", args)
    try:
        out = tmp_path / "logs" / "bus.out"

        def serving(times: int) -> bool:
            return out.exists() and out.read_text().count("tracerl bus: listening") == times

        wait_for(lambda: serving(1), 30, what="the bus")
        server = psutil.Process(first.popen.pid).children()[0].pid

        second = supervisor.restart("bus")
        assert first.killed and not first.alive and first.popen.returncode == -9
        assert second.alive and second.popen.pid != first.popen.pid and second.args == args
        assert supervisor.processes["bus"] is second and supervisor.failed() == []
        # The group went down together: the old nats-server did not outlive its launcher.
        wait_for(lambda: _gone(server), 10, what="the old nats-server to die")
        try:  # this session reaps orphans (tests/conftest.py): collect the one made here
            os.waitpid(server, 0)
        except ChildProcessError:
            pass
        # Serving again (stopping a bus that is still starting would orphan its nats-server).
        wait_for(lambda: serving(2), 30, what="the restarted bus")
    finally:
        supervisor.stop_all()
    assert supervisor.processes["bus"].popen.returncode is not None
