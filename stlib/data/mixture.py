"""Batches mixed from named streams, each with an exact share of every global batch.

Self-training (Sec. 3.2: half of each batch human-labeled, half pseudo-labeled), Noisy
Student (labeled + pseudo-labeled images) and joint training (Sec. 5: detection +
classification) all train on several data streams at once. `Mixture` gives each stream a
fixed number of examples in every global batch and draws them from the stream's own
`train_batch` (a pure function of (seed, step), with a seed of its own), so every stream
walks through its data at its own pace and a step's batch never depends on the others.

`train_batch` returns {stream name: that stream's batch}; `sharding.shard_batch` shards
each stream's arrays on the `data` axis.
"""
from __future__ import annotations

import math


def split_batch(batch_size: int, shares: dict, multiple: int = 1) -> dict:
    """Per-stream example counts for a global batch: proportional to `shares`, each a multiple
    of `multiple` (devices x processes, so every stream shards evenly), summing to `batch_size`.

    Counts are rounded to the nearest multiple (largest remainders get the leftover); a share
    that rounds to 0 examples, or a batch that cannot be split into multiples, is a
    `ValueError` naming the stream.
    """
    if not shares:
        raise ValueError("split_batch: no streams")
    bad = {k: v for k, v in shares.items() if not v > 0}
    if bad:
        raise ValueError(f"split_batch: stream shares must be > 0, got {bad}")
    if batch_size % multiple:
        raise ValueError(f"split_batch: batch size {batch_size} is not a multiple of {multiple}")
    total = float(sum(shares.values()))
    units = batch_size // multiple
    exact = {k: units * v / total for k, v in shares.items()}
    counts = {k: math.floor(x) for k, x in exact.items()}
    left = units - sum(counts.values())
    for k in sorted(exact, key=lambda k: counts[k] - exact[k])[:left]:
        counts[k] += 1
    zero = [k for k, c in counts.items() if c == 0]
    if zero:
        raise ValueError(f"split_batch: stream(s) {zero} get no example of a batch of {batch_size} "
                         f"(shares {shares}, in multiples of {multiple}); raise the batch size or the share")
    return {k: c * multiple for k, c in counts.items()}


class Mixture:
    """Named data streams mixed into every global batch with exact shares.

    Args:
      streams: {name: data}, each with ``train_batch(step, batch_size, seed, process_index,
        process_count)`` and ``__len__`` (e.g. `DetectionData`, `ClassificationData`).
      sizes: {name: examples of the global batch}, e.g. from `split_batch`.
    """

    def __init__(self, streams: dict, sizes: dict):
        if set(streams) != set(sizes):
            raise ValueError(f"Mixture: streams {sorted(streams)} and sizes {sorted(sizes)} differ")
        self.streams = dict(streams)
        self.sizes = dict(sizes)
        self.batch_size = sum(sizes.values())

    def __len__(self) -> int:
        """Distinct examples over all streams."""
        return sum(len(d) for d in self.streams.values())

    @property
    def stats(self) -> dict:
        out = {}
        for name, d in self.streams.items():
            for k, v in (getattr(d, "stats", None) or {}).items():
                out[f"{name}/{k}"] = v
        return out

    def stream_seed(self, seed: int, name: str) -> int:
        """Stream i's data order seed: distinct per stream, fixed by (seed, position)."""
        return seed + 1_000_003 * list(self.streams).index(name)

    def train_batch(self, step: int, batch_size: int, seed: int, process_index: int = 0,
                    process_count: int = 1) -> dict:
        """{name: this process's slice of that stream's part of global batch `step`}."""
        if batch_size != self.batch_size:
            raise ValueError(f"Mixture: asked for a batch of {batch_size}, the streams add up to {self.batch_size} "
                             f"({self.sizes})")
        return {name: d.train_batch(step, self.sizes[name], self.stream_seed(seed, name), process_index,
                                    process_count)
                for name, d in self.streams.items()}
