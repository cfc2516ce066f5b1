"""The decode lane: a block's decode runs here while the caller denoises the next block.

One worker thread takes decodes in order (a stream decoder's state moves forward one block at a time). On a GPU it
runs them on its own CUDA stream, so the decode's kernels and the next block's denoising kernels share the GPU; on
a second GPU (``pipe.set_decode_device("cuda:1")``) they run there, apart. Before a decode starts, its stream waits
for the event the producer recorded when it submitted (the latents are ready), and the inputs are marked as used on
that stream (the caching allocator keeps them until the decode is done). On the CPU the thread alone does the
overlapping (tests).
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

import torch


class DecodeLane:
    def __init__(self, device):
        self.device = torch.device(device)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wanfly-decode")
        self.side = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    def submit(self, fn: Callable, *tensors: torch.Tensor) -> Future:
        """``fn(*tensors)`` on the lane, after everything already submitted; a Future of its result."""
        ready = None
        producers = {t.device for t in tensors if t.device.type == "cuda"}
        if self.side is not None and producers:
            ready = [torch.cuda.Event() for _ in producers]
            for event, device in zip(ready, producers):
                event.record(torch.cuda.current_stream(device))  # the latents are complete here

        def run():
            if self.side is None:
                return fn(*tensors)
            with torch.cuda.device(self.device), torch.cuda.stream(self.side):
                for event in ready or ():
                    self.side.wait_event(event)
                for t in tensors:
                    if t.device == self.device:
                        t.record_stream(self.side)
                return fn(*tensors)

        return self.pool.submit(run)

    def close(self) -> None:
        self.pool.shutdown(wait=True)
