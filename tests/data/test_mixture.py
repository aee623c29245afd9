"""Mixed batches: every stream gets exactly its share of every global batch."""
import numpy as np
import pytest

from stlib.data.mixture import Mixture, split_batch


class Counting:
    """A stream whose examples are its positions, so a batch shows what it drew."""

    def __init__(self, n, tag):
        self.n, self.tag = n, tag

    def __len__(self):
        return self.n

    def train_batch(self, step, batch_size, seed, process_index=0, process_count=1):
        per = batch_size // process_count
        order = np.random.default_rng([seed, 0]).permutation(self.n)
        pos = step * batch_size + process_index * per
        return {"x": order[(pos + np.arange(per)) % self.n], "tag": np.full(per, self.tag)}


@pytest.mark.parametrize("batch,shares,multiple,want", [
    (128, {"labeled": 0.5, "pseudo": 0.5}, 2, {"labeled": 64, "pseudo": 64}),
    (512, {"coco": 1, "pseudo": 1}, 8, {"coco": 256, "pseudo": 256}),       # Sec. 3.2: 256 + 256
    (12, {"a": 1, "b": 2}, 1, {"a": 4, "b": 8}),
    (10, {"a": 1, "b": 1, "c": 1}, 2, {"a": 4, "b": 4, "c": 2}),
])
def test_split_batch_is_exact_and_sharded(batch, shares, multiple, want):
    got = split_batch(batch, shares, multiple)
    assert got == want
    assert sum(got.values()) == batch and all(v % multiple == 0 for v in got.values())


def test_split_batch_errors_name_the_stream():
    with pytest.raises(ValueError, match="'pseudo'"):
        split_batch(8, {"labeled": 0.95, "pseudo": 0.05}, 2)
    with pytest.raises(ValueError, match="not a multiple"):
        split_batch(9, {"a": 1}, 2)


def test_mixture_batches_have_each_streams_share_and_own_order():
    a, b = Counting(10, 0), Counting(7, 1)
    mix = Mixture({"a": a, "b": b}, {"a": 6, "b": 2})
    assert len(mix) == 17
    seen_b = []
    for step in range(7):
        batch = mix.train_batch(step, 8, seed=3)
        assert batch["a"]["x"].shape == (6,) and batch["b"]["x"].shape == (2,)
        assert set(batch["a"]["tag"]) == {0} and set(batch["b"]["tag"]) == {1}
        seen_b.extend(batch["b"]["x"].tolist())
    assert sorted(seen_b) == sorted(list(range(7)) * 2)   # two epochs of b, each image once per epoch
    # a pure function of (seed, step), streams seeded apart
    again = mix.train_batch(4, 8, seed=3)
    np.testing.assert_array_equal(again["a"]["x"], mix.train_batch(4, 8, seed=3)["a"]["x"])
    assert mix.stream_seed(3, "a") != mix.stream_seed(3, "b")
    # the processes of a multi-host job split each stream
    halves = [mix.train_batch(2, 8, 3, i, 2) for i in range(2)]
    np.testing.assert_array_equal(np.concatenate([h["a"]["x"] for h in halves]), mix.train_batch(2, 8, 3)["a"]["x"])
    with pytest.raises(ValueError, match="add up to 8"):
        mix.train_batch(0, 16, 3)
