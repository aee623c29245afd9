"""Segmentation pseudo masks (Sec. 3.2): multi-scale probabilities averaged at the original size,
and the 0.5 ignore rule."""
import numpy as np
import pytest

from stlib import config as cfg
from stlib.data.segmentation import IGNORE_LABEL
from stlib.pseudo.masks import SCALES, MaskTeacher, pseudo_mask
from tests.conftest import REPO


@pytest.fixture(scope="module")
def segmenter():
    """The smoke segmenter with a classifier layer drawn 300x its init scale: an untrained head
    (N(0, 0.01)) gives near-uniform probabilities, where argmaxes are ties; this one is decisive."""
    import jax
    from stlib.experiments.assemble import build_task
    task = build_task(cfg.load_params(REPO / "params/smoke/segmentation.yaml"), progress=False)
    state = task.init_state()
    params = jax.tree.map(np.asarray, state.params)
    head = params["head"]["classifier"]
    head["kernel"] = head["kernel"] * 300.0
    return task, state.replace(params=params)


def test_the_ignore_rule_keeps_only_confident_pixels():
    probs = np.zeros((2, 3, 4), np.float32)
    probs[..., 0] = 0.2
    probs[0, :, 2] = 0.8            # confident class 2
    probs[1, :, 1] = 0.45           # best, but below 0.5
    probs[1, :, 3] = 0.35
    mask, score = pseudo_mask(probs)
    assert mask.tolist() == [[2, 2, 2], [IGNORE_LABEL] * 3]
    np.testing.assert_allclose(score, [[0.8] * 3, [0.45] * 3], rtol=1e-6)
    assert pseudo_mask(probs, threshold=0.4)[0].tolist() == [[2, 2, 2], [1, 1, 1]]


def test_single_scale_is_the_segmenters_own_prediction(segmenter):
    """At scale 1 on an image of the model's size, the teacher's most probable class is what the
    evaluation step predicts."""
    import jax
    task, state = segmenter
    batch = next(task.val_data.eval_batches(8))
    pred = np.asarray(task.predict_step({"params": state.params, "batch_stats": state.batch_stats},
                                        jax.tree.map(np.asarray, batch)))
    teacher = MaskTeacher(task, state, scales=(1.0,))
    for b in range(3):
        probs = teacher.probabilities(batch["image"][b])
        assert probs.shape == (64, 64, task.num_classes)
        np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
        # the same program but for the sharded batch: a near-tie pixel may flip (1 of 12,288 did)
        assert (probs.argmax(-1) != pred[b]).mean() < 1e-3 and len(np.unique(pred[b])) > 1


def test_multi_scale_averages_the_scales_at_the_original_size(segmenter):
    """Sec. 3.2's six scales on an odd-sized image: each scale is padded to the backbone's stride,
    resized back to 50 x 70, and the six are averaged."""
    task, state = segmenter
    image = np.random.default_rng(0).integers(0, 255, (50, 70, 3), np.uint8)
    teacher = MaskTeacher(task, state)
    assert teacher.scales == SCALES == (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
    probs = teacher.probabilities(image)
    assert probs.shape == (50, 70, task.num_classes)
    each = [MaskTeacher(task, state, scales=(s,)).probabilities(image) for s in SCALES]
    np.testing.assert_allclose(probs, np.mean(each, axis=0), rtol=1e-5, atol=1e-6)
    assert not np.allclose(each[0], each[-1])          # the scales see different things
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)


def test_pseudo_masks_go_to_a_store_that_resumes_and_keeps_the_threshold_open(segmenter, tmp_path):
    """The world's aug split labelled into a store, killed after two shards and resumed: every
    image exactly once, and the stored class + probability give Sec. 3.2's mask at 0.5 (and any
    other threshold) as the teacher does directly, up to the store's 1/255 steps."""
    from stlib.data.segmentation import world_segmentation_source
    from stlib.pseudo.masks import apply_threshold, label_masks
    from stlib.pseudo.store import PseudoLabelStore, StoreError
    task, state = segmenter
    teacher = MaskTeacher(task, state, scales=(0.5, 1.0))
    source = world_segmentation_source("smoke", 0, "aug")
    meta = {"teacher": "decisive smoke segmenter", "source": source.name}

    class Killed(Exception):
        pass

    def kill_after_two(k):
        if k == 1:
            raise Killed
    with pytest.raises(Killed):
        label_masks(teacher, source, tmp_path / "store", meta=meta, shard_size=8, after_shard=kill_after_two,
                    progress=False)
    assert PseudoLabelStore.open(tmp_path / "store").missing_shards() == [2, 3]
    store = label_masks(teacher, source, tmp_path / "store", meta=meta, shard_size=8, progress=False)
    labels = store.load()
    assert store.complete and [x.index for x in labels] == list(range(28))
    for x in labels[::9]:
        probs = teacher.probabilities(source.load_image(x.index))
        for t in (0.5, 0.3):
            want, score = pseudo_mask(probs, threshold=t)
            sure = np.abs(score - t) > 1 / 255
            assert (apply_threshold(x, t)[sure] == want[sure]).all()
        assert (apply_threshold(x, 0.5) == IGNORE_LABEL).any() or (score >= 0.5).all()
    with pytest.raises(StoreError, match="different settings"):
        label_masks(MaskTeacher(task, state, scales=(1.0,)), source, tmp_path / "store", meta=meta, shard_size=8,
                    progress=False)
