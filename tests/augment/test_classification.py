"""Classification augmentation: shapes, determinism, flip/crop invariants, RandAugment under jit."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stlib.augment.classification import augment_classification, prepare_classification_eval
from stlib.augment.flip_crop import IMAGENET_MEAN, IMAGENET_STD

S = 32
# One compiled function per (policy, options), shared by the tests.
aug = jax.jit(augment_classification, static_argnames=("policy", "randaugment_layers", "scale_range", "hflip"))


def _images(seed=0, b=4):
    return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (b, S, S, 3), dtype=np.uint8))


def _formula(images):
    return (np.asarray(images, np.float32) / 255.0 - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)


@pytest.mark.parametrize("policy", ["flip_crop", "randaugment"])
def test_shape_dtype_determinism(policy):
    images = _images()
    fn = lambda k, x: aug(k, x, policy)
    a = fn(jax.random.key(0), images)
    assert a.shape == images.shape and a.dtype == jnp.float32 and bool(jnp.isfinite(a).all())
    np.testing.assert_array_equal(a, fn(jax.random.key(0), images))
    assert not np.allclose(a, fn(jax.random.key(1), images))
    # Examples get independent draws: the same image twice in a batch is augmented differently.
    twin = jnp.stack([images[0], images[0]])
    t = fn(jax.random.key(2), twin)
    assert not np.allclose(t[0], t[1])


def test_no_jitter_no_flip_is_plain_normalization():
    images = _images()
    out = aug(jax.random.key(0), images, scale_range=(1.0, 1.0), hflip=False)
    np.testing.assert_allclose(out, _formula(images), atol=1e-5)


def test_flip_only_is_identity_or_mirror():
    images = _images(b=4)
    out = np.asarray(aug(jax.random.key(3), images, scale_range=(1.0, 1.0)))
    ref = _formula(images)
    flipped = [np.allclose(o, r[:, ::-1], atol=1e-5) for o, r in zip(out, ref)]
    same = [np.allclose(o, r, atol=1e-5) for o, r in zip(out, ref)]
    assert all(f or s for f, s in zip(flipped, same)) and any(flipped) and any(same)
    sym = jnp.concatenate([images[:, :, : S // 2], images[:, :, : S // 2][:, :, ::-1]], axis=2)
    out = aug(jax.random.key(3), sym, scale_range=(1.0, 1.0))
    np.testing.assert_allclose(out, _formula(sym), atol=1e-5)


def test_scaled_down_pads_with_mean():
    images = _images()
    out = np.asarray(aug(jax.random.key(0), images, scale_range=(0.5, 0.5), hflip=False))
    assert np.abs(out[:, S // 2 + 1:]).max() == 0 and np.abs(out[:, :, S // 2 + 1:]).max() == 0
    assert np.abs(out[:, : S // 2 - 1, : S // 2 - 1]).max() > 0


def test_randaugment_changes_pixels_beyond_flip_crop():
    images = _images()
    key = jax.random.key(5)
    ra, plain = aug(key, images, "randaugment"), aug(key, images, "flip_crop")
    # Same key, so the flip/crop part is the same: the difference is RandAugment's.
    assert not np.allclose(ra, plain)
    # Every example changed unless both of its layers drew the identity branch (p = 1/289).
    assert sum(not np.allclose(r, p) for r, p in zip(ra, plain)) >= 3


def test_unknown_policy():
    with pytest.raises(ValueError, match=r"pretrain.augment 's4': unknown classification augment policy "
                                         r"\(known: flip_crop\|randaugment\)"):
        augment_classification(jax.random.key(0), _images(), "s4")


def test_eval_normalization_is_the_formula():
    images = _images()
    out = jax.jit(prepare_classification_eval)(images)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, _formula(images), atol=1e-6)


def test_randaugment_on_a_mesh_runs_per_device_with_the_same_output():
    """With the mesh, RandAugment's per-example loop runs on each device's slice (no gather)
    and gives exactly what the unsharded loop gives."""
    from stlib.train import sharding
    mesh = sharding.create_mesh()
    x = np.random.RandomState(0).randint(0, 255, (8, 32, 32, 3)).astype(np.uint8)
    xs = sharding.shard_batch({"i": x}, mesh)["i"]
    key = jax.random.PRNGKey(3)
    plain = jax.jit(lambda k, v: augment_classification(k, v, policy="randaugment"))(key, xs)
    sharded = jax.jit(lambda k, v: augment_classification(k, v, policy="randaugment", mesh=mesh))(key, xs)
    np.testing.assert_array_equal(np.asarray(plain), np.asarray(sharded))
    assert sharded.sharding.spec == jax.sharding.PartitionSpec("data")
