"""Where a training step's time goes (scripts/train_demo_model.py's progress lines), with no extra host syncs."""

from __future__ import annotations

import time

import torch

PHASES = ("h2d", "fwd", "bwd", "opt")  # a step after its batch arrives, each phase ending at one clock edge


class StepClock:
    """Where a training step's time goes, averaged over a log window, with no extra host syncs.

    `data`: host time blocked on the DataLoader. Then a clock edge before the copy and after each of
    `PHASES`. The host's edges only say when work was *enqueued*; on CUDA each edge also records an event,
    read once the step's `loss.item()` has synchronised anyway, so the phase times are the GPU timeline's
    (the GPU is idle at the first edge, the previous step having synced): a phase whose host issue time is
    about its GPU time is bound by Python/launch overhead, not by kernels. On CPU both are the same.
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.events = [torch.cuda.Event(enable_timing=True) for _ in range(len(PHASES) + 1)] if self.cuda else []
        self.host = [0.0] * (len(PHASES) + 1)
        self.reset()

    def reset(self) -> None:
        self.steps, self.data, self.total = 0, 0.0, 0.0
        self.gpu, self.issue = [0.0] * len(PHASES), [0.0] * len(PHASES)

    def edge(self, i: int) -> None:
        self.host[i] = time.perf_counter()
        if self.cuda:
            self.events[i].record()

    def end_step(self, data_s: float) -> None:
        """After the step's host sync: add this step (its data wait `data_s`) to the window."""
        self.steps += 1
        self.data += data_s
        self.total += data_s + time.perf_counter() - self.host[0]
        for k in range(len(PHASES)):
            issue = self.host[k + 1] - self.host[k]
            self.issue[k] += issue
            self.gpu[k] += self.events[k].elapsed_time(self.events[k + 1]) / 1e3 if self.cuda else issue

    def summary(self, batch: int) -> str:
        """e.g. `124 ms/step (data 60, h2d 2, fwd 30, bwd 25, opt 5; host issue fwd 28, bwd 20, opt 3), 387 ex/s`."""
        if not self.steps:
            return "first step not timed (warm-up)"
        n = self.steps
        ms = [f"{p} {t / n * 1e3:.0f}" for p, t in zip(("data", *PHASES), (self.data, *self.gpu), strict=True)]
        issued = ", ".join(f"{p} {t / n * 1e3:.0f}" for p, t in zip(PHASES[1:], self.issue[1:], strict=True))
        issue = f"; host issue {issued}" if self.cuda else ""
        return (f"{self.total / n * 1e3:.0f} ms/step ({', '.join(ms)}{issue}), "
                f"{batch * self.steps / self.total:.0f} ex/s")
