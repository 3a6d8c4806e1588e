"""Independent benchmark runs, in this process or in worker processes with one thread each."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable, Sequence


def _one_thread(torch_threads: int, configs: Sequence[Path]) -> None:
    """
    Set a worker up as the main process is: one BLAS thread, `torch_threads` torch threads.

    It also loads `configs`, which registers their robots (a config arrives pickled, its
    robot known by name).
    """
    import torch
    from threadpoolctl import threadpool_limits

    from mbpl_ros.experiment import load_experiment

    torch.set_num_threads(torch_threads)
    threadpool_limits(limits=1)
    for config in configs:
        load_experiment(config)


def run_tasks(tasks: Sequence[tuple[Callable, tuple]], jobs: int, configs: Sequence[Path],
              torch_threads: int = 1) -> list[Any]:
    """
    Return function(*arguments) for each (function, arguments) of `tasks`, in their order.

    With jobs 1 they run here one after the other; else up to `jobs` at once, each in a
    spawned worker process set up by _one_thread (functions and arguments must pickle).
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    if jobs == 1:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1):
            return [function(*arguments) for function, arguments in tasks]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    setup = functools.partial(_one_thread, torch_threads, tuple(configs))
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=setup) as pool:
        futures = [pool.submit(function, *arguments) for function, arguments in tasks]
        return [future.result() for future in futures]
