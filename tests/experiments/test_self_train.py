"""Self-training and joint training: loss normalization, streams, student init, teacher checks,
pseudo labelling (resume after a kill, bad unlabeled files) and the student's resume."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stlib import config as cfg
from stlib import losses

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "params/smoke/retinanet.yaml"
ST = ["self_train.unlabeled=world:scenes", "self_train.score_threshold=0.01", "self_train.store_min_score=0.01",
      "train.batch_size=8"]


# ---------------------------------------------------------------- loss normalization (Appendix B)

def test_normalized_loss_matches_the_papers_formula_and_gradients():
    lh, lp = jnp.float32(2.0), jnp.float32(0.5)
    avg = {"human": jnp.float32(3.0), "pseudo": jnp.float32(0.6)}
    for alpha in (1.0, 2.0, 4.0):
        total, w = losses.combine_stream_losses({"human": lh, "pseudo": lp}, {"pseudo": alpha}, avg)
        want = 1 / (1 + alpha) * (2.0 + alpha * (3.0 / 0.6) * 0.5)
        np.testing.assert_allclose(float(total), want, rtol=1e-6)
        # the moving averages are constants for the gradient: d/dL_p = alpha/(1+alpha) * mean_h/mean_p
        g = jax.grad(lambda a, b: losses.combine_stream_losses({"human": a, "pseudo": b}, {"pseudo": alpha}, avg)[0],
                     argnums=(0, 1))(lh, lp)
        np.testing.assert_allclose([float(g[0]), float(g[1])], [1 / (1 + alpha), alpha / (1 + alpha) * 5.0], rtol=1e-6)
        # ... and no gradient reaches the averages even when they depend on the losses
        ga = jax.grad(lambda b: losses.combine_stream_losses(
            {"human": lh, "pseudo": b}, {"pseudo": alpha}, {"human": avg["human"], "pseudo": b})[0])(lp)
        np.testing.assert_allclose(float(ga), alpha / (1 + alpha) * 3.0 / 0.5, rtol=1e-6)


def test_plain_loss_and_single_stream():
    total, w = losses.combine_stream_losses({"human": jnp.float32(2.0), "pseudo": jnp.float32(0.5)}, {"pseudo": 4.0},
                                            normalize=False)
    assert float(total) == pytest.approx(2.0 + 4.0 * 0.5)
    total, w = losses.combine_stream_losses({"human": jnp.float32(2.0)}, {"pseudo": 4.0}, None)
    assert float(total) == 2.0 and list(w) == ["human"]


def test_three_streams_generalize_the_formula():
    ls = {"human": jnp.float32(1.0), "pseudo": jnp.float32(2.0), "classification": jnp.float32(4.0)}
    avg = {"human": 1.0, "pseudo": 4.0, "classification": 2.0}
    total, w = losses.combine_stream_losses(ls, {"pseudo": 1.0, "classification": 2.0}, avg)
    want = (1.0 + 1.0 * (1 / 4) * 2.0 + 2.0 * (1 / 2) * 4.0) / (1 + 1 + 2)
    np.testing.assert_allclose(float(total), want, rtol=1e-6)


def test_loss_averages_start_at_the_first_loss_then_move():
    avg = {"count": jnp.int32(0), "human": jnp.float32(0), "pseudo": jnp.float32(0)}
    avg = losses.update_loss_averages(avg, {"human": jnp.float32(2.0), "pseudo": jnp.float32(1.0)}, 0.9)
    assert (int(avg["count"]), float(avg["human"]), float(avg["pseudo"])) == (1, 2.0, 1.0)
    avg = losses.update_loss_averages(avg, {"human": jnp.float32(4.0), "pseudo": jnp.float32(1.0)}, 0.9)
    assert float(avg["human"]) == pytest.approx(0.9 * 2.0 + 0.1 * 4.0)


# ---------------------------------------------------------------- a smoke teacher, once

@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    from stlib.experiments.assemble import train
    out = tmp_path_factory.mktemp("outputs")
    p = cfg.load_params(SMOKE)
    run_dir = out / "runs" / cfg.run_id(p)
    train(p, run_dir, progress=False)
    return run_dir


def _student(teacher, *extra):
    return cfg.load_params(SMOKE, [f"self_train.teacher={teacher}", *ST, *extra])


def test_student_starts_from_the_teacher_with_exact_stream_shares(teacher):
    from stlib.experiments.assemble import build_task
    from stlib.pseudo.teacher import TeacherRun
    exp = build_task(_student(teacher, "self_train.joint=true", "pretrain.image_size=32", "train.batch_size=12"),
                     progress=False)
    assert exp.train_data.sizes == {"human": 4, "pseudo": 4, "classification": 4}
    batch = exp.train_data.train_batch(0, 12, 0)
    assert {k: len(v["image"]) for k, v in batch.items()} == {"human": 4, "pseudo": 4, "classification": 4}
    state = exp.init_state()
    t = TeacherRun(teacher).load_state(exp.detector)
    for name in ("backbone", "fpn", "head"):
        jax.tree.map(np.testing.assert_array_equal, state.params[name], t.params[name])
        jax.tree.map(np.testing.assert_array_equal, state.batch_stats[name], t.batch_stats[name])
    assert "cls_head" in state.params and int(state.loss_avg["count"]) == 0
    state, metrics = exp.train_step(state, jax.tree.map(np.asarray, __import__(
        "stlib.train.sharding", fromlist=["x"]).shard_batch(batch, exp.mesh)))
    m = jax.device_get(metrics)
    for k in ("human/loss", "pseudo/loss", "classification/loss", "classification/accuracy", "pseudo/weight"):
        assert np.isfinite(m[k]), k
    # first step: the averages are the losses, so every normalized stream weighs like the human one
    np.testing.assert_allclose(m["loss"], m["human/loss"], rtol=1e-5)


def test_the_pseudo_stream_applies_the_hard_threshold(teacher):
    from stlib.pseudo.data import PseudoLabeledSource
    from stlib.pseudo.label import make_pseudo_labels
    from stlib.pseudo.sources import parse_unlabeled
    store = make_pseudo_labels(teacher, "world:scenes", min_score=0.01, progress=False)
    src = parse_unlabeled("world:scenes", "smoke", 0)
    all_boxes = sum(len(l.boxes) for l in store.load())
    mid = float(np.median(np.concatenate([l.scores for l in store.load()])))
    above = PseudoLabeledSource(store, src, mid)
    assert 0 < sum(len(r.boxes) for r in above.records) < all_boxes
    assert len(above.records) == len(src)        # images without boxes stay in, as background
    img = above.load_image(0)
    assert img.shape[:2] == (above.records[0].height, above.records[0].width)


def test_a_missing_or_unfinished_teacher_is_an_error_before_any_work(teacher, tmp_path, monkeypatch):
    from stlib.experiments import assemble
    import stlib.data.sources as sources
    for mod in (sources, assemble):
        monkeypatch.setattr(mod, "build_detection_sources", lambda *a: pytest.fail("work started"))
    with pytest.raises(cfg.ParamsError, match="no such run folder"):
        assemble.build_task(_student(tmp_path / "nope"), progress=False)
    half = tmp_path / "half"
    half.mkdir()
    shutil.copy(teacher / "params.yaml", half / "params.yaml")
    with pytest.raises(cfg.ParamsError, match="has not finished"):
        assemble.build_task(_student(half), progress=False)


def test_a_teacher_of_other_classes_is_an_error_before_labelling(teacher, monkeypatch):
    from stlib.experiments import assemble
    from stlib.pseudo import teacher as teacher_mod
    real = teacher_mod.TeacherRun.categories
    monkeypatch.setattr(teacher_mod.TeacherRun, "categories",
                        lambda self: [{"id": c["id"], "name": c["name"] + "-x"} for c in real(self)])
    monkeypatch.setattr(assemble, "make_pseudo_labels", lambda *a, **k: pytest.fail("labelling started"))
    with pytest.raises(cfg.ParamsError, match="classes differ"):
        assemble.build_task(_student(teacher), progress=False)


def test_pseudo_labelling_killed_part_way_resumes_to_every_image_exactly_once(teacher, tmp_path):
    from stlib.pseudo.label import make_pseudo_labels
    from stlib.pseudo.store import PseudoLabelStore
    killed = tmp_path / "killed"
    code = (f"from stlib.pseudo.label import make_pseudo_labels\n"
            f"make_pseudo_labels({str(teacher)!r}, 'world:scenes', min_score=0.01, store_dir={str(killed)!r}, "
            f"shard_size=3, progress=False)\n")
    env = {**os.environ, "STLIB_KILL_AFTER_SHARDS": "2"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]
    part = PseudoLabelStore.open(killed)
    assert sorted(part.done_shards()) == [0, 1] and not part.complete
    assert any(p.name.endswith(".tmp") for p in (killed / "shards").iterdir())   # the half-written shard
    resumed = make_pseudo_labels(teacher, "world:scenes", min_score=0.01, store_dir=killed, shard_size=3,
                                 progress=False)
    whole = make_pseudo_labels(teacher, "world:scenes", min_score=0.01, store_dir=tmp_path / "whole", shard_size=3,
                               progress=False)
    got, want = resumed.load(), whole.load()
    assert [l.index for l in got] == list(range(16))
    for a, b in zip(got, want):
        assert a.key == b.key
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-4)
        np.testing.assert_array_equal(a.classes, b.classes)
    coco = resumed.export_coco(tmp_path / "pseudo.json", min_score=0.01)
    assert len(coco["images"]) == 16 and coco["info"]["teacher_run_id"] == teacher.name


def test_an_unlabeled_folder_with_junk_is_labelled_with_counted_skips(teacher, tmp_path):
    from PIL import Image
    from stlib.data.world import ensure_world
    from stlib.pseudo.label import make_pseudo_labels
    folder = tmp_path / "mine"
    (folder / "sub").mkdir(parents=True)
    pool = sorted((Path(ensure_world("smoke", 0)) / "pools/scenes/images").glob("*.png"))[:3]
    for i, p in enumerate(pool):
        shutil.copy(p, folder / ("sub" if i else "") / f"img{i}.png")
    Image.open(pool[0]).convert("RGB").save(folder / "photo.jpg")
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.png").write_bytes(b"\x89PNG garbage")
    store = make_pseudo_labels(teacher, f"folder:{folder}", min_score=0.01, progress=False)
    s = store.summary(0.01)
    assert s["images"] == 5 and s["skipped"] == 1          # 4 good images + the corrupt png
    assert store.meta["summary"]["source_non_image_files"] == 1
    skipped = [l for l in store.load() if l.skipped]
    assert [l.key for l in skipped] == ["broken.png"]


def _pool_folder(tmp_path, n=6):
    from stlib.data.world import ensure_world
    folder = tmp_path / "pool"
    folder.mkdir()
    for i, p in enumerate(sorted((Path(ensure_world("smoke", 0)) / "pools/scenes/images").glob("*.png"))[:n]):
        shutil.copy(p, folder / f"img{i}.png")
    return folder


def test_renamed_pool_images_make_a_new_store_whose_export_lists_the_files_there_are(teacher, tmp_path):
    """Issue 14: renaming 5 images of a pool and labelling again exported names that no longer
    existed. A store is addressed by its source's image list, so the renamed pool is a new store."""
    from stlib.pseudo.label import make_pseudo_labels
    folder = _pool_folder(tmp_path)
    first = make_pseudo_labels(teacher, f"folder:{folder}", min_score=0.01, progress=False)
    for i in range(5):
        (folder / f"img{i}.png").rename(folder / f"renamed{i}.png")
    second = make_pseudo_labels(teacher, f"folder:{folder}", min_score=0.01, progress=False)
    assert second.root != first.root
    names = {im["file_name"] for im in second.export_coco(tmp_path / "p.json", min_score=0.01)["images"]}
    assert names == {p.name for p in folder.iterdir()}
    assert all(l.content for l in second.load())        # each image keyed by its pixels too


def test_renaming_files_while_a_store_is_half_made_never_mixes_them(teacher, tmp_path):
    """Issue 14: renames between a killed labelling run and its resume gave 5 duplicates and 5 images
    never labelled. The default store of the renamed pool is a new, whole store; resuming the old
    folder explicitly is a one-line error naming the changed image list."""
    from stlib import errors
    from stlib.pseudo.label import make_pseudo_labels
    from stlib.pseudo.store import StoreError
    folder = _pool_folder(tmp_path)
    half = tmp_path / "half"
    make_pseudo_labels(teacher, f"folder:{folder}", min_score=0.01, store_dir=half, shard_size=3, progress=False)
    (half / "shards" / "shard-00001.npz").unlink()                    # as if killed after shard 0
    meta = json.loads((half / "store.json").read_text())
    (half / "store.json").write_text(json.dumps({k: v for k, v in meta.items() if k not in ("complete", "summary")}))
    for i in range(5):
        (folder / f"img{i}.png").rename(folder / f"z{i}.png")
    with pytest.raises(StoreError, match="source_identity") as e:
        make_pseudo_labels(teacher, f"folder:{folder}", min_score=0.01, store_dir=half, shard_size=3, progress=False)
    assert "\n" not in errors.one_line(e.value)
    fresh = make_pseudo_labels(teacher, f"folder:{folder}", min_score=0.01, shard_size=3, progress=False)
    keys = [l.key for l in fresh.load()]
    assert sorted(keys) == sorted(p.name for p in folder.iterdir()) and len(set(keys)) == len(keys) == 6


def test_a_pseudo_image_replaced_after_labelling_is_a_counted_skip(teacher, tmp_path):
    from stlib.pseudo.data import PseudoLabeledSource
    from stlib.pseudo.label import make_pseudo_labels
    from stlib.pseudo.sources import parse_unlabeled
    folder = _pool_folder(tmp_path, n=2)
    store = make_pseudo_labels(teacher, f"folder:{folder}", min_score=0.01, progress=False)
    shutil.copy(folder / "img1.png", folder / "img0.png")               # same name, other pixels
    src = PseudoLabeledSource(store, parse_unlabeled(f"folder:{folder}"), 0.01)
    assert src.load_image_or_none(1) is not None
    assert src.load_image_or_none(0) is None and src.stats["images_corrupt"] == 1


def test_a_self_training_run_resumes_exactly(teacher, tmp_path, capsys):
    from stlib.train.checkpoints import Checkpoints
    from stlib.experiments.assemble import train as train_and_evaluate
    p = _student(teacher)
    a = train_and_evaluate(p, tmp_path / "a", progress=False)
    b_dir = tmp_path / "b"
    train_and_evaluate(p, b_dir, progress=False)
    ck = Checkpoints(b_dir / "checkpoints")
    ck.latest.delete(6)          # as if killed after the step-3 checkpoint
    ck.close()
    capsys.readouterr()
    b = train_and_evaluate(p, b_dir, progress=False)
    assert "from step 3" in capsys.readouterr().out
    assert b["last_step"] == a["last_step"] == 6
    la = [json.loads(l) for l in (tmp_path / "a/metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(l) for l in (b_dir / "metrics.jsonl").read_text().splitlines()]
    ta = [e for e in la if e["kind"] == "train"]
    tb = [e for e in lb if e["kind"] == "train"]
    assert [e["step"] for e in ta] == [e["step"] for e in tb]
    np.testing.assert_allclose([e["loss"] for e in ta], [e["loss"] for e in tb], rtol=1e-5)
    np.testing.assert_allclose([e["pseudo/loss_avg"] for e in ta], [e["pseudo/loss_avg"] for e in tb], rtol=1e-5)
    assert a["pseudo_labels"]["teacher"].endswith(teacher.name)


def test_soft_nms_pseudo_labels_are_their_own_store(teacher, tmp_path):
    from stlib.pseudo.label import make_pseudo_labels
    hard = make_pseudo_labels(teacher, "world:scenes", min_score=0.01, max_images=4, progress=False)
    soft = make_pseudo_labels(teacher, "world:scenes", min_score=0.01, nms="soft_nms", max_images=4, progress=False)
    assert soft.root != hard.root and soft.meta["nms"] == "soft_nms" and soft.meta["soft_nms_sigma"] == 0.3
    assert soft.num_images == hard.num_images == 4
    # both pick the best box first; after it Soft-NMS decays overlapping scores instead of dropping boxes
    for s_, h in zip(soft.load(), hard.load()):
        assert s_.scores.max() == pytest.approx(h.scores.max())
    assert [len(l.boxes) for l in soft.load()] != [len(l.boxes) for l in hard.load()] or any(
        not np.allclose(a.scores, b.scores) for a, b in zip(soft.load(), hard.load()))


def test_uncertain_pseudo_boxes_become_ignore_boxes(teacher):
    from stlib.pseudo.data import PseudoLabeledSource
    from stlib.pseudo.label import make_pseudo_labels
    from stlib.pseudo.sources import parse_unlabeled
    store = make_pseudo_labels(teacher, "world:scenes", min_score=0.01, progress=False)
    src = parse_unlabeled("world:scenes", "smoke", 0)
    scores = np.concatenate([l.scores for l in store.load()])
    mid = float(np.median(scores))
    plain = PseudoLabeledSource(store, src, mid)
    banded = PseudoLabeledSource(store, src, mid, ignore_threshold=0.01)
    for a, b, l in zip(plain.records, banded.records, store.load()):
        n_sure, n_band = int((l.scores >= mid).sum()), int(((l.scores >= 0.01) & (l.scores < mid)).sum())
        assert (b.classes > 0).sum() == n_sure and (b.classes < 0).sum() == n_band
        np.testing.assert_array_equal(b.classes[:n_sure], a.classes)      # positives first, as without the band
        assert np.all(b.classes[n_sure:] == -1)
    assert banded.stats["ignore_boxes"] > 0 and plain.stats["ignore_boxes"] == 0
    with pytest.raises(cfg.ParamsError, match="ignore_threshold"):
        cfg.load_params(SMOKE, ["self_train.ignore_threshold=0.05", "self_train.store_min_score=0.1"])


# ---------------------------------------------------------------- soft pseudo labels (our addition)

def test_soft_focal_loss_is_focal_loss_on_hard_targets_and_minimal_at_the_target():
    logits = jnp.linspace(-4.0, 4.0, 17)
    for t in (0.0, 1.0):
        y = jnp.full_like(logits, t)
        np.testing.assert_allclose(losses.soft_focal_loss(logits, y), losses.focal_loss(logits, y), rtol=1e-5, atol=1e-7)
    for t in (0.2, 0.5, 0.8):
        grad = jax.grad(lambda z: losses.soft_focal_loss(z, jnp.float32(t)))
        z_star = float(jnp.log(t / (1 - t)))       # p = t
        assert abs(float(grad(jnp.float32(z_star)))) < 1e-5
        assert float(grad(jnp.float32(z_star - 1))) < 0 < float(grad(jnp.float32(z_star + 1)))


def _toy_targets(scores, classes):
    from stlib.data.anchors import AnchorConfig, assign_soft_targets, assign_targets, generate_anchors
    anchors = jnp.asarray(generate_anchors((64, 64), AnchorConfig(min_level=3, max_level=4)))
    boxes = jnp.asarray([[8, 8, 40, 40], [8, 8, 40, 40], [30, 34, 60, 62], [0, 0, 0, 0]], jnp.float32)
    valid = jnp.asarray([True, True, True, False])
    soft = assign_soft_targets(anchors, boxes, jnp.asarray(classes), jnp.asarray(scores, jnp.float32), valid, 3)
    hard = assign_targets(anchors, boxes, jnp.asarray(classes), valid)
    return soft, hard


def test_soft_targets_with_unit_scores_are_the_hard_targets():
    # one class per object: boxes 0 and 1 coincide with the same class, like a duplicate
    soft, hard = _toy_targets([1.0, 1.0, 1.0, 0.0], [2, 2, 3, 0])
    onehot = jax.nn.one_hot(hard["cls_targets"] - 1, 3)
    np.testing.assert_array_equal(soft["cls_targets"], onehot)
    np.testing.assert_array_equal(soft["not_ignored"], hard["cls_targets"] >= 0)
    np.testing.assert_array_equal(soft["box_targets"], hard["box_targets"])
    np.testing.assert_array_equal(soft["box_weight"], hard["positive"].astype(jnp.float32))
    assert int(hard["positive"].sum()) > 2
    # and so is the loss
    key = jax.random.PRNGKey(0)
    a = soft["cls_targets"].shape[0]
    cls_logits = jax.random.normal(key, (1, a, 3))
    box_preds = 0.1 * jax.random.normal(jax.random.fold_in(key, 1), (1, a, 4))
    ls, _ = losses.soft_detection_loss(cls_logits, box_preds, soft["cls_targets"][None], soft["not_ignored"][None],
                                       soft["box_targets"][None], soft["box_weight"][None])
    lh, _ = losses.detection_loss(cls_logits, box_preds, hard["cls_targets"][None], hard["box_targets"][None], 3)
    np.testing.assert_allclose(ls, lh, rtol=1e-5)


def test_soft_targets_carry_scores_per_class_and_ignore_boxes_stay_ignored():
    # an object the teacher called class 1 (0.6) and class 2 (0.3); another object an ignore box
    soft, hard = _toy_targets([0.6, 0.3, 0.4, 0.0], [1, 2, -1, 0])
    pos = np.asarray(soft["positive"])
    t = np.asarray(soft["cls_targets"])
    assert pos.sum() > 0
    np.testing.assert_allclose(t[pos, 0], 0.6)                  # the best class's score
    assert np.all(t[pos, 1] <= 0.3 + 1e-6) and t[pos, 1].max() == pytest.approx(0.3)   # the other class, partly
    assert np.all(t[pos, 2] == 0) and np.all(t[~pos] == 0)
    np.testing.assert_allclose(np.asarray(soft["box_weight"])[pos], 0.6)
    # the ignore box's anchors are neither positive nor negative, as in the hard targets
    np.testing.assert_array_equal(soft["not_ignored"], hard["cls_targets"] >= 0)
    assert not np.all(np.asarray(soft["not_ignored"]))


def test_soft_pseudo_labels_travel_with_their_scores_and_train(teacher):
    from stlib.data.pipeline import DetectionData
    from stlib.pseudo.data import PseudoLabeledSource
    from stlib.pseudo.label import make_pseudo_labels
    from stlib.pseudo.sources import parse_unlabeled
    from stlib.experiments.assemble import build_task
    from stlib.train.sharding import shard_batch
    store = make_pseudo_labels(teacher, "world:scenes", min_score=0.01, progress=False)
    src = parse_unlabeled("world:scenes", "smoke", 0)
    soft = PseudoLabeledSource(store, src, 0.01, soft=True)
    hard = PseudoLabeledSource(store, src, 0.01)
    for r, h in zip(soft.records, hard.records):
        assert np.all(np.diff(r.scores) <= 0) and h.scores is None          # most sure first
        assert sorted(map(tuple, r.boxes.tolist())) == sorted(map(tuple, h.boxes.tolist()))
    ex = DetectionData(soft, 64, 8).example(0)
    n = min(8, len(soft.records[0].boxes))
    np.testing.assert_allclose(ex["scores"][:n], soft.records[0].scores[:n])
    assert "scores" not in DetectionData(hard, 64, 8).example(0)
    exp = build_task(_student(teacher, "self_train.targets=soft"), progress=False)
    batch = exp.train_data.train_batch(0, exp.params.train.batch_size, 0)
    assert "scores" in batch["pseudo"] and "scores" not in batch["human"]
    state = exp.init_state()
    state, metrics = exp.train_step(state, shard_batch(batch, exp.mesh))
    m = jax.device_get(metrics)
    assert np.isfinite(m["loss"]) and m["pseudo/soft_positives"] <= m["pseudo/num_positives"]
    assert m["pseudo/num_positives"] > 0
    with pytest.raises(cfg.ParamsError, match="targets"):
        cfg.load_params(SMOKE, ["self_train.targets=fuzzy"])


def test_oracle_pseudo_labels_are_the_pools_hidden_truth(teacher):
    from stlib.pseudo import quality
    from stlib.pseudo.data import PseudoLabeledSource
    from stlib.pseudo.label import make_pseudo_labels
    from stlib.pseudo.sources import parse_unlabeled
    store = make_pseudo_labels(teacher, "world:scenes", min_score=0.01, progress=False)
    src = parse_unlabeled("world:scenes", "smoke", 0)
    oracle = PseudoLabeledSource(store, src, 0.5, oracle=True)
    gts = quality.ground_truth_for(store.load(), quality.load_gt(src.hidden_gt))
    assert len(oracle.records) == len(gts) == len(src)
    for r, (boxes, classes) in zip(oracle.records, gts):
        np.testing.assert_array_equal(r.boxes, boxes)
        np.testing.assert_array_equal(r.classes, classes)
    with pytest.raises(cfg.ParamsError, match="self_train.oracle"):   # before any labelling
        cfg.load_params(SMOKE, ["self_train.oracle=true", "self_train.unlabeled=world:objects"])
    objects = parse_unlabeled("world:objects", "smoke", 0)
    with pytest.raises(ValueError, match="hidden ground-truth boxes"):
        PseudoLabeledSource(make_pseudo_labels(teacher, "world:objects", min_score=0.01, progress=False), objects,
                            0.5, oracle=True)


def _class_folders(root, classes=("n01", "n02", "n03"), per_class=3):
    from PIL import Image
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), np.uint8)).save(root / c / f"{c}_{i}.JPEG")
    (root / "n01" / "notes.txt").write_text("not an image")
    (root / "empty").mkdir()
    return root


def test_joint_training_reads_imagenet_style_class_folders(tmp_path):
    """Paper scale's joint stream (Table 7): ImageNet's train layout, one sub-folder per class, read
    as labeled classification data; the world's classification set stays the smoke / mini default,
    and a detection source without one says how to give the folder."""
    from stlib.data.classification import class_folders
    from stlib.data.coco import DataError
    from stlib.experiments import identity
    from stlib.experiments.assemble import build_task
    from stlib.tasks.detection import joint_classification_source
    root = _class_folders(tmp_path / "train")
    src = class_folders(root)
    assert [c["name"] for c in src.categories] == ["n01", "n02", "n03"] and len(src) == 9
    assert src.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2] and src.stats["files_ignored"] == 1
    with pytest.raises(DataError, match="has no sub-folder with images"):
        class_folders(tmp_path / "train" / "empty")
    p = cfg.load_params(SMOKE, ["self_train.joint=true", f"self_train.joint_source=folder:{root}",
                                "pretrain.image_size=32", "train.batch_size=8"])
    exp = build_task(p, progress=False)
    assert exp.train_data.sizes == {"human": 4, "classification": 4}
    batch = exp.train_data.train_batch(0, 8, 0)["classification"]
    assert batch["image"].shape == (4, 32, 32, 3) and set(batch["label"].tolist()) <= {0, 1, 2}
    assert exp.classifier is not None
    ident = identity.run_identity(p)
    (root / "n02" / "n02_9.JPEG").write_bytes((root / "n02" / "n02_0.JPEG").read_bytes())
    assert identity.run_identity(p)["classification"] != ident["classification"]   # the folder is hashed
    coco = cfg.load_params("params/paper/retinanet.yaml", ["self_train.joint=true"])
    with pytest.raises(cfg.ParamsError, match=r"give the classification images as self_train.joint_source=folder:"):
        joint_classification_source(coco)
