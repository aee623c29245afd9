"""Examples whose mask carries each box as a label, so boxes can be checked against pixels."""
import jax
import jax.numpy as jnp
import numpy as np

from stlib.augment.flip_crop import IGNORE_LABEL

S = 64


def make_example(rng, h=48, w=64, n=3, size=S, side=(6, 12), num_slots=4):
    """A canvas with `n` boxes; mask = k+1 inside box k, 0 on other content, 255 on the pad."""
    img = np.zeros((size, size, 3), np.uint8)
    img[:h, :w] = rng.integers(0, 255, size=(h, w, 3))
    boxes = np.zeros((num_slots, 4), np.float32)
    mask = np.full((size, size), IGNORE_LABEL, np.uint8)
    mask[:h, :w] = 0
    valid = np.zeros(num_slots, bool)
    for k in range(n):
        bh, bw = rng.integers(side[0], side[1]), rng.integers(side[0], side[1])
        y0, x0 = rng.integers(0, h - bh), rng.integers(0, w - bw)
        boxes[k] = (y0, x0, y0 + bh, x0 + bw)
        mask[y0:y0 + bh, x0:x0 + bw] = k + 1
        valid[k] = True
    return {"image": jnp.asarray(img), "image_hw": jnp.array([h, w], jnp.int32), "boxes": jnp.asarray(boxes),
            "classes": jnp.arange(1, num_slots + 1, dtype=jnp.int32), "valid": jnp.asarray(valid),
            "mask": jnp.asarray(mask)}


def disjoint_example(seed, n=3, **kw):
    """`make_example` redrawn until no box hides part of another."""
    rng = np.random.default_rng(seed)
    while True:
        ex = make_example(rng, n=n, **kw)
        m = np.asarray(ex["mask"])
        b = np.asarray(ex["boxes"])
        if all((m == k + 1).sum() == (b[k, 2] - b[k, 0]) * (b[k, 3] - b[k, 1]) for k in range(n)):
            return ex


def stack(examples):
    return jax.tree.map(lambda *x: jnp.stack(x), *examples)


def assert_boxes_match_mask(out, n, tol=1.0, context="", border_tol=2.0):
    """Each valid box equals the bounding box of its mask label within `tol` px; dropped boxes
    have (almost) no pixels left.

    A box cut by the content border after a rotation or shear ends in a wedge: a pixel belongs
    to the mask when its centre is inside, so up to 0.5 / tan(angle) px of the wedge's tip has
    no pixel (1.7 px at shear 0.3). Boxes touching the border get `border_tol`.
    """
    m = np.asarray(out["mask"])
    h, w = np.asarray(out["image_hw"])
    size = m.shape[0]
    for k in range(n):
        ys, xs = np.nonzero(m == k + 1)
        if not bool(out["valid"][k]):
            assert len(ys) <= 2 * size, f"{context}: box {k} dropped but {len(ys)} of its pixels remain"
            continue
        assert len(ys) > 0, f"{context}: box {k} kept but none of its pixels remain"
        y0, x0, y1, x1 = np.asarray(out["boxes"][k])
        got = (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1)
        at_border = min(y0, x0) < 0.5 or y1 > h - 0.5 or x1 > w - 0.5
        t = border_tol if at_border else tol
        assert np.allclose(got, (y0, x0, y1, x1), atol=t), f"{context}: box {k} {(y0, x0, y1, x1)} vs pixels {got}"


def assert_mask_labels(out, n, context=""):
    vals = set(np.unique(np.asarray(out["mask"])).tolist())
    assert vals <= set(range(n + 1)) | {IGNORE_LABEL}, f"{context}: mask values {sorted(vals)}"
