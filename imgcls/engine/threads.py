"""The CPU thread count that trains fastest right now. On a machine where other processes keep cores busy,
using every core is the slowest choice: each OpenMP region waits for its descheduled thread (a default run
took 222 s instead of 70 s with one of two cores busy: shared/PERF-NOTES.md). So a few counts are timed on
training steps of the real model before training starts, and the fastest is kept."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable

import torch

from imgcls.config import Config
from imgcls.engine.evaluate import autocast, build_criterion
from imgcls.models import Classifier
from imgcls.utils.env import autocast_dtype

log = logging.getLogger("imgcls")
PROBE_STEPS = 3  # timed steps per thread count, after one warm-up step


def thread_candidates(cores: int) -> list[int]:
    """All cores, one fewer (one busy), half, and one."""
    return sorted({cores, cores - 1, cores // 2, 1} - {0}, reverse=True)


def fastest_threads(
    step: Callable[[], None],
    candidates: list[int],
    steps: int = PROBE_STEPS,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[int, dict[int, float]]:
    """Times `steps` calls of `step` (after a warm-up call) at each thread count; sets and returns the
    fastest count, with the seconds per step of each."""
    seconds = {}
    for threads in candidates:
        torch.set_num_threads(threads)
        step()
        start = clock()
        for _ in range(steps):
            step()
        seconds[threads] = (clock() - start) / steps
    best = min(seconds, key=lambda n: (seconds[n], -n))  # a tie: more threads
    torch.set_num_threads(best)
    return best, seconds


def training_step(model: Classifier, cfg: Config, batch_size: int) -> Callable[[], None]:
    """One forward and backward pass of a copy of `model` on a batch of random images of its input shape:
    the model's weights, BatchNorm statistics and the global random state stay as they are."""
    probe = copy.deepcopy(model).train()
    device = next(probe.parameters()).device
    meta = probe.meta
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch_size, meta.in_chans, meta.input_size, meta.input_size, generator=gen).to(device)
    if cfg.train.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = (
        torch.zeros(batch_size, meta.num_classes)
        if meta.multilabel
        else torch.zeros(batch_size, dtype=torch.long)
    )
    y = y.to(device)
    criterion = build_criterion(meta.multilabel, None, cfg.train.label_smoothing)
    amp = autocast_dtype(device, cfg.train.amp)

    def step() -> None:
        with autocast(device, amp):
            logits = probe(x)
        criterion(logits.float(), y).backward()
        probe.zero_grad(set_to_none=True)

    return step


def choose_threads(model: Classifier, cfg: Config, batch_size: int, cores: int) -> int:
    """The fastest of `thread_candidates(cores)` on this model's training steps, set for the run and logged."""
    best, seconds = fastest_threads(training_step(model, cfg, batch_size), thread_candidates(cores))
    timings = ", ".join(f"{n}: {1000 * s:.0f} ms" for n, s in seconds.items())
    if best == cores:
        log.info("threads: %d (per training step %s)", best, timings)
    else:
        log.warning(
            "threads: %d of %d cores: other processes are using the rest (per training step %s); "
            "set train.threads to choose",
            best,
            cores,
            timings,
        )
    return best
