"""``python -m tests.tracerl.descendants_owner``: starts processes in every way a vLLM engine does, inside
``multiprocessing_children_end_with_this_process`` and outside it, prints their pids and the shared
memory its child made as JSON, and waits to be killed."""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.connection
import subprocess
import sys
import time
from multiprocessing import shared_memory

from tracerl.end_with_parent import multiprocessing_children_end_with_this_process

FOREVER_S = 600


def start_grandchildren(report: multiprocessing.connection.Connection) -> None:
    """Runs in a spawned child, as vLLM's engine core does when it starts its workers and their shared memory."""
    forked = multiprocessing.get_context("fork").Process(target=time.sleep, args=(FOREVER_S,))
    spawned = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(FOREVER_S,))
    forked.start()
    spawned.start()
    memory = shared_memory.SharedMemory(create=True, size=1 << 20)
    report.send({"grandchildren": [forked.pid, spawned.pid], "shared_memory": memory.name})
    time.sleep(FOREVER_S)


if __name__ == "__main__":
    spawn = multiprocessing.get_context("spawn")
    reader, writer = spawn.Pipe(duplex=False)
    with multiprocessing_children_end_with_this_process():
        spawned = spawn.Process(target=start_grandchildren, args=(writer,))
        spawned.start()
        forked = multiprocessing.get_context("fork").Process(target=time.sleep, args=(FOREVER_S,))
        forked.start()
        executed = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({FOREVER_S})"])
    spawned_outside = spawn.Process(target=time.sleep, args=(FOREVER_S,))
    spawned_outside.start()
    report = reader.recv()
    print(
        json.dumps(
            {
                "tied": [spawned.pid, forked.pid, *report["grandchildren"]],
                "untied": [executed.pid, spawned_outside.pid],
                "shared_memory": report["shared_memory"],
            }
        ),
        flush=True,
    )
    time.sleep(FOREVER_S)
