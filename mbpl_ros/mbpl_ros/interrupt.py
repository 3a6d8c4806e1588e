"""
Ctrl-C and SIGTERM at the command line: stop cleanly, keep what is complete, say how to go on.

`interruptible()` turns SIGINT and SIGTERM into KeyboardInterrupt in the main thread, but
never while the main thread is inside a module that writes a run's files (checkpoints,
metrics, the recording): there the interrupt waits until the write is done, so a stop
cannot leave half a record in a file. The command then prints `stopped_line(...)` and exits
with EXIT_INTERRUPTED.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
import threading
from pathlib import Path
from typing import Iterator, Optional, Sequence

from mbpl_ros.checkpoint import checkpoint_paths

#: The exit status of a command stopped by SIGINT or SIGTERM (128 + SIGINT, as shells report).
EXIT_INTERRUPTED = 130
#: Modules whose code must not be interrupted half-way (they write a run's files).
PROTECTED_FILES = tuple(
    str(Path(__file__).with_name(name)) for name in ("checkpoint.py", "recording.py")
)
RETRY_S = 0.02


def _inside_protected(frame) -> bool:
    while frame is not None:
        filename = frame.f_code.co_filename
        if filename in PROTECTED_FILES or f"{os.sep}mcap{os.sep}" in filename:
            return True
        frame = frame.f_back
    return False


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """
    Defer SIGINT and SIGTERM to a KeyboardInterrupt in the main thread, within the block.

    Within the block, SIGINT and SIGTERM raise KeyboardInterrupt in the main thread (after
    any write of a run's file in progress); the previous handlers come back afterwards. A
    signal still deferred when the block ends raises KeyboardInterrupt there.
    """
    pid = os.getpid()
    deferred: list = []   # signals waiting for a write to end

    def handler(signum, frame):
        if deferred:
            deferred.pop().cancel()
        if _inside_protected(frame):  # deliver it again once the write is done
            timer = threading.Timer(RETRY_S, os.kill, (pid, signum))
            timer.daemon = True
            deferred.append(timer)
            timer.start()
            return
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {
        signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
        if deferred:
            deferred.pop().cancel()
            if sys.exc_info()[0] is None:   # not already leaving by an exception
                raise KeyboardInterrupt("deferred")


def resume_command(program: Sequence[str], options: Sequence[tuple]) -> str:
    """
    Quote the shell command `program` with `options`.

    `options` are [(flag, value or None (a switch) or False (left out))].
    """
    words = list(program)
    for flag, value in options:
        if value is None:
            words.append(flag)
        elif value is not False:
            words += [flag, str(value)]
    return shlex.join(words)


def stopped_line(command: str, output: Path, resume: str) -> str:
    """One line: what of the run in `output` was kept, and the exact command to resume it."""
    checkpoints = checkpoint_paths(output)
    if checkpoints:
        iteration = int(checkpoints[-1].stem.split("_")[1])
        kept = (
            f"iterations 0 .. {iteration} are kept in {output} ({checkpoints[-1].name}), "
            f"the half-done iteration {iteration + 1} is discarded"
        )
    else:
        kept = f"no iteration was complete, nothing in {output} is kept"
    return f"{command}: stopped; {kept}; resume with: {resume}"


def print_stopped(command: str, output: Path, resume: str, stream: Optional[object] = None) -> int:
    """Print stopped_line to stderr and return EXIT_INTERRUPTED."""
    print(stopped_line(command, output, resume), file=stream or sys.stderr, flush=True)
    return EXIT_INTERRUPTED
