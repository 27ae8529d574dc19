"""What keeps a multi-process run from hanging silently: collectives that time out, one line when
a rank is lost, and a stack dump on request.

- ``bound_collectives``: every collective fails after ``COVIDSEG_DDP_TIMEOUT`` seconds (default
  600) instead of torch's 30 minutes.
- A rank that dies ends the run: Lightning's launcher watches the ranks it started (every 5 s;
  it kills the run when one exits non-zero) and torchrun watches its workers; a rank waiting
  in a collective on a dead peer gets gloo's "Connection closed by peer" at once, which
  ``lost_peer`` recognises so that fit says it in one line.
- ``dump_stacks_on_signal``: ``kill -USR1 PID`` prints every thread's Python stack of that
  process to its stderr (``faulthandler``): what a hung rank is waiting on.
"""

from __future__ import annotations

import datetime
import faulthandler
import os
import signal
import sys

from pytorch_lightning import Trainer

DDP_TIMEOUT_S = 600.0  # torch's default is 30 min: a stuck rank would hold a cluster job (or CI) that long


def bound_collectives(trainer: Trainer) -> float | None:
    """Every collective of a DDP run fails after ``COVIDSEG_DDP_TIMEOUT`` seconds (default
    ``DDP_TIMEOUT_S``) instead of torch's 30 minutes, unless the strategy was given its own
    timeout; returns the timeout in seconds (``None`` when the run is not DDP)."""
    from pytorch_lightning.strategies import DDPStrategy
    from torch.distributed.constants import default_pg_timeout

    strategy = trainer.strategy
    if not isinstance(strategy, DDPStrategy):
        return None
    if getattr(strategy, "_timeout", None) in (None, default_pg_timeout):
        strategy._timeout = datetime.timedelta(seconds=float(os.environ.get("COVIDSEG_DDP_TIMEOUT", DDP_TIMEOUT_S)))
    return strategy._timeout.total_seconds()


def is_timeout(err: BaseException) -> bool:
    text = str(err).lower()
    return "timed out" in text or "timeout" in text


def lost_peer(err: BaseException) -> bool:
    """gloo's error when another rank's process ended (its sockets closed)."""
    text = str(err).lower()
    return "connection closed by peer" in text or "connection reset by peer" in text


def launched_procs(trainer: Trainer) -> list:
    """The ``subprocess.Popen`` objects of the ranks Lightning's launcher started from this
    process (rank 0 of a node; empty elsewhere)."""
    launcher = getattr(trainer.strategy, "launcher", None)
    return list(getattr(launcher, "procs", None) or [])


def _descendants(pid: int) -> list[int]:
    """``pid``'s child processes and theirs (Linux ``/proc``; empty elsewhere)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                with open(f"/proc/{p}/task/{t}/children") as f:
                    kids = [int(k) for k in f.read().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def stop_other_ranks(trainer: Trainer, dump_stacks: bool = False) -> None:
    """Kills the processes Lightning's DDP launcher started from this one (rank 0 of a node) and
    their children (DataLoader workers: a stuck one outlives its rank and holds the job's output
    open); Lightning does so on Ctrl-C, not when an exception ends the run. ``dump_stacks``:
    each of them first prints its threads' stacks (``kill -USR1``), to say where it was stuck."""
    import time

    procs = [p for p in launched_procs(trainer) if p.poll() is None]
    pids = [pid for p in procs for pid in (p.pid, *_descendants(p.pid))]
    sig = getattr(signal, "SIGKILL", signal.SIGTERM)
    if dump_stacks and pids and hasattr(signal, "SIGUSR1"):
        print(f"DDP: the stacks of processes {', '.join(map(str, pids))} (the other ranks and their DataLoader workers) follow", file=sys.stderr, flush=True)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGUSR1)
            except OSError:
                pass
        time.sleep(2)
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def dump_stacks_on_signal() -> None:
    """``kill -USR1 PID`` prints every thread's stack to stderr (no-op where there is no SIGUSR1)."""
    if not hasattr(signal, "SIGUSR1"):
        return
    # sys.stderr may be a stream without a file descriptor (a notebook, pytest's capture): the
    # process's own stderr then, or nothing
    for stream in (sys.stderr, sys.__stderr__):
        try:
            faulthandler.register(signal.SIGUSR1, file=stream, all_threads=True, chain=False)
            return
        except (AttributeError, ValueError, OSError):  # io.UnsupportedOperation is an OSError and a ValueError
            continue
