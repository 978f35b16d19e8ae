"""CUDA graphs for the torch backend: one graph per input shape, kept in a small LRU, replayed with static buffers.

A captured graph replays the whole forward pass as one launch, so the many small kernels of an efficient SR network
no longer pay a CPU launch each. A graph is fixed to the shapes and addresses it was captured with, so the backend
keeps one per input shape (DIV2K's 100 test inputs come in 26 sizes), copies each input into the graph's static
input tensor and reads the static output tensor after replay.

Everything that decides (which shape is cached, what to evict, when to capture) is plain Python here, tested on the
CPU with a fake capture; only `capture_cuda_graph` touches CUDA.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import torch

#: Shapes kept captured at once. Each graph holds its own memory pool (its intermediates), so the cache is small;
#: 8 covers the common sizes of a test set, and a shape seen again after eviction is simply captured again.
DEFAULT_GRAPH_CACHE = 8
#: Eager passes on a side stream before a capture, as torch requires: they let cuDNN pick its kernels and the caching
#: allocator grow, so that nothing is chosen or allocated for the first time inside the capture.
CAPTURE_WARMUP = 3

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass
class CacheStats:
    """How the LRU was used: `misses` is the number of captures, `evictions` the graphs dropped for room."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "evictions": self.evictions}


class LRUCache(Generic[K, V]):
    """At most `capacity` values, the least recently used dropped first; values are made on a miss by `make`."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"an LRU cache needs room for at least one entry, got {capacity}")
        self.capacity = capacity
        self.stats = CacheStats()
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K, make: Callable[[], V]) -> tuple[V, bool]:
        """The value for `key` and whether it was made now (a miss). `make` runs only on a miss, and before any
        eviction, so a failing `make` leaves the cache as it was."""
        if key in self._items:
            self._items.move_to_end(key)
            self.stats.hits += 1
            return self._items[key], False
        value = make()
        self.stats.misses += 1
        self._items[key] = value
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)
            self.stats.evictions += 1
        return value, True

    def keys(self) -> list[K]:
        """Keys from the least to the most recently used."""
        return list(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._items.clear()


class Replayable(Protocol):
    """A captured forward pass: write into `static_in`, call `replay`, read `static_out`."""

    @property
    def static_in(self) -> torch.Tensor: ...

    @property
    def static_out(self) -> torch.Tensor: ...

    def replay(self) -> None: ...


Forward = Callable[[torch.Tensor], torch.Tensor]
#: Captures `forward` for inputs like the example tensor (same shape, dtype, layout and device).
Capture = Callable[[Forward, torch.Tensor], Replayable]


@dataclass
class CapturedGraph:
    """A torch CUDA graph and the tensors it reads and writes; they must stay alive as long as the graph."""

    graph: Any  # torch.cuda.CUDAGraph (kept as Any: CPU builds of torch type it, but cannot create one)
    static_in: torch.Tensor
    static_out: torch.Tensor

    def replay(self) -> None:
        self.graph.replay()


def capture_cuda_graph(forward: Forward, example: torch.Tensor, *, warmup: int = CAPTURE_WARMUP) -> CapturedGraph:
    """Capture `forward` on inputs shaped like `example` (a CUDA tensor), the way torch documents it: a few eager
    passes on a side stream first, then the capture on torch's own capture stream. Call it outside any timer."""
    device = example.device
    static_in = example.clone()  # clone keeps the memory format (channels_last stays channels_last)
    current = torch.cuda.current_stream(device)
    side = torch.cuda.Stream(device=device)  # type: ignore[no-untyped-call]
    side.wait_stream(current)
    with torch.cuda.stream(side):
        for _ in range(warmup):
            forward(static_in)
    current.wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = forward(static_in)
    # Errors of the capture surface here, outside the timed replay.
    torch.cuda.synchronize(device)
    return CapturedGraph(graph, static_in, static_out)


def shape_key(x: torch.Tensor) -> tuple[int, ...]:
    """The cache key: the shape. dtype and memory format are fixed for one backend, so the shape decides."""
    return tuple(int(d) for d in x.shape)


class GraphedForward:
    """`forward` replayed from one captured graph per input shape, at most `capacity` graphs kept (LRU)."""

    def __init__(self, forward: Forward, capture: Capture, capacity: int = DEFAULT_GRAPH_CACHE) -> None:
        self._forward = forward
        self._capture = capture
        self._cache: LRUCache[tuple[int, ...], Replayable] = LRUCache(capacity)

    @property
    def stats(self) -> CacheStats:
        return self._cache.stats

    @property
    def capacity(self) -> int:
        return self._cache.capacity

    def cached_shapes(self) -> list[tuple[int, ...]]:
        return self._cache.keys()

    def load(self, x: torch.Tensor) -> tuple[Replayable, bool]:
        """The graph for `x`'s shape, with `x` copied into its static input; captured now (True) at first sight.
        The capture and the copy both belong outside the timer: the timed part is `replay()` alone."""
        graph, captured = self._cache.get(shape_key(x), lambda: self._capture(self._forward, x))
        graph.static_in.copy_(x)
        return graph, captured

    def clear(self) -> None:
        self._cache.clear()
