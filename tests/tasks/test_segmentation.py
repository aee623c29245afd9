"""Segmentation runs on the detection engine (issue 19's first part): the world's scene masks as
data, bad masks named, a smoke run that reports mIoU and resumes after a kill to the same numbers."""
import json

import numpy as np
import pytest
from PIL import Image

from stlib.data.coco import DataError
from stlib.data.segmentation import IGNORE_LABEL, SegmentationData, SegmentationSource, fit_square
from tests.conftest import REPO, run_python
from tests.train.test_train import KILLER

SEG = str(REPO / "params/smoke/segmentation.yaml")


def _folder(tmp_path, n=3, size=(40, 30)):
    (tmp_path / "JPEGImages").mkdir()
    (tmp_path / "SegmentationClass").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (*size, 3), np.uint8)).save(tmp_path / "JPEGImages" / f"{i:03d}.jpg")
        mask = np.zeros(size, np.uint8)
        mask[5:20, 4:15] = 2
        mask[0, :] = IGNORE_LABEL
        Image.fromarray(mask).save(tmp_path / "SegmentationClass" / f"{i:03d}.png")
    return SegmentationSource.from_folders(tmp_path / "JPEGImages", tmp_path / "SegmentationClass", ["cat", "dog"], name="voc")


def test_examples_are_fitted_and_padded_with_ignore(tmp_path):
    src = _folder(tmp_path)
    assert src.num_classes == 3 and len(src) == 3
    ex = SegmentationData(src, 64).example(0)
    assert ex["image"].shape == (64, 64, 3) and ex["mask"].shape == (64, 64)
    assert ex["image_hw"].tolist() == [64, 48]                 # 40 x 30 scaled by 64 / 40
    assert (ex["mask"][:, 48:] == IGNORE_LABEL).all() and (ex["image"][:, 48:] == 0).all()
    assert set(np.unique(ex["mask"]).tolist()) == {0, 2, IGNORE_LABEL}
    img, mask, hw = fit_square(np.zeros((10, 20, 3), np.uint8), np.ones((10, 20), np.uint8), 40)
    assert hw.tolist() == [20, 40] and (mask[:20] == 1).all() and (mask[20:] == IGNORE_LABEL).all()


def test_bad_masks_name_their_file(tmp_path):
    src = _folder(tmp_path)
    Image.fromarray(np.full((40, 30), 7, np.uint8)).save(tmp_path / "SegmentationClass" / "001.png")
    with pytest.raises(DataError, match=r"001.png: class id\(s\) \[7\] outside 0..2"):
        SegmentationData(src, 64).example(1)
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "SegmentationClass" / "002.png")
    with pytest.raises(DataError, match=r"002.png: mask is 30x20 but its image .*002.jpg is 30x40"):
        SegmentationData(src, 64).example(2)
    (tmp_path / "SegmentationClass" / "000.png").unlink()
    with pytest.raises(DataError, match=r"voc: image .*000.jpg has no mask .*000.png"):
        SegmentationSource.from_folders(tmp_path / "JPEGImages", tmp_path / "SegmentationClass", ["cat", "dog"], name="voc")


def _run(out, kill_at=-1):
    sets = [x for s in ("train.steps=12", "train.checkpoint_every=4", "train.eval_every=6", "train.log_every=1")
            for x in ("--set", s)]
    return run_python(KILLER.format(kill_at=kill_at, params=SEG, out=str(out), sets=sets))


@pytest.mark.slow   # ~70 s; the engine's resume is checked on every run by tests/train and tests/data/test_stream.py
def test_a_segmentation_run_reports_miou_and_resumes_after_a_kill_to_the_same_numbers(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    done = _run(a)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _run(b, kill_at=7).returncode != 0
    resumed = _run(b)
    assert resumed.returncode == 0 and "from step 6" in resumed.stdout, resumed.stderr[-3000:]
    (ra,), (rb,) = list((a / "runs").iterdir()), list((b / "runs").iterdir())
    assert ra.name == rb.name
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (ra, rb))
    assert ma["status"] == "complete" and 0 < ma["mIoU"] <= 1
    assert (ma["mIoU"], ma["best_step"], ma["last_step"]) == (mb["mIoU"], mb["best_step"], mb["last_step"])
    evals = [json.loads(l) for l in (ra / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in evals if e["kind"] == "eval"]
    assert [e["step"] for e in evals] == [6, 12] and "IoU/background" in evals[0]
    la, lb = ([json.loads(l)["loss"] for l in (r / "metrics.jsonl").read_text().splitlines()
               if json.loads(l)["kind"] == "train"] for r in (ra, rb))
    assert la == pytest.approx(lb, rel=1e-6) and la[0] != la[-1]


@pytest.mark.slow   # the train notebook runs in the default suite for detection; this is its segmentation path
def test_stlib_train_runs_a_segmentation_preset_through_its_notebook(tmp_path, capsys):
    """`stlib train` (papermill, train.ipynb) on the smoke segmentation preset: the curves show
    mIoU, the predictions figure shows image, predicted and true masks, the summary prints mIoU."""
    from stlib import cli
    assert cli.main(["train", SEG, "--outputs", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "mIoU 0." in out and "COCO AP" not in out
    (run,) = list((tmp_path / "runs").iterdir())
    assert (run / "predictions.png").stat().st_size > 5_000 and (run / "curves.png").is_file()


def _voc(root, ids_train=("2007_000001", "2007_000002", "2007_000003"), ids_val=("2007_000010", "2007_000011")):
    """A tiny PASCAL VOC 2012 folder: JPEGImages, palette SegmentationClass (VOC's colour map),
    ImageSets/Segmentation lists; objects of classes 8 (cat) and 12 (dog) with 255 borders."""
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True)
    rng = np.random.default_rng(1)
    palette = [0] * 768
    for k in range(256):   # any palette: VOC's masks are read by index, not by colour
        palette[3 * k: 3 * k + 3] = [(k * 37) % 256, (k * 91) % 256, (k * 53) % 256]
    for i in (*ids_train, *ids_val):
        h, w = int(rng.integers(40, 60)), int(rng.integers(40, 60))
        img = rng.integers(0, 80, (h, w, 3), np.uint8)
        mask = np.zeros((h, w), np.uint8)
        mask[5:25, 5:25], img[5:25, 5:25] = 8, (230, 60, 60)
        mask[26:38, 20:40], img[26:38, 20:40] = 12, (60, 200, 60)
        mask[24:26, 5:25] = IGNORE_LABEL
        Image.fromarray(img).save(root / "JPEGImages" / f"{i}.jpg")
        pim = Image.fromarray(mask, mode="P")
        pim.putpalette(palette)
        pim.save(root / "SegmentationClass" / f"{i}.png")
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids_train) + "\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids_val) + "\n")
    return root


def test_a_voc_layout_folder_reads_and_names_its_bad_entries(tmp_path):
    """PASCAL VOC as users have it (palette PNG masks, list files) reads as its 21 classes; a list
    entry without its files, or a detector on VOC, is one clear error."""
    from stlib import config as cfg
    from stlib.data.segmentation import VOC_CLASSES
    from stlib.experiments.assemble import build_task
    root = _voc(tmp_path / "VOC2012")
    src = SegmentationSource.voc(root, "train")
    assert len(src) == 3 and src.num_classes == 21 and src.class_names[7] == VOC_CLASSES[7] == "cat"
    ex = SegmentationData(src, 64).example(0)
    assert set(np.unique(ex["mask"]).tolist()) <= {0, 8, 12, IGNORE_LABEL} and 8 in ex["mask"]
    (root / "ImageSets/Segmentation/val.txt").write_text("2007_000010\n2007_000099\n")
    with pytest.raises(DataError, match=r"val.txt:2: '2007_000099' has no file .*JPEGImages/2007_000099.jpg"):
        SegmentationSource.voc(root, "val")
    with pytest.raises(DataError, match=r"VOC split 'train_aug': list file not found"):
        SegmentationSource.voc(root, "train_aug")
    with pytest.raises(cfg.ParamsError, match="data.source voc is PASCAL VOC's segmentation data"):
        build_task(cfg.load_params("params/smoke/retinanet.yaml", ["data.source=voc", f"data.voc_root={root}"]),
                   progress=False)


@pytest.mark.slow   # ~45 s
def test_a_voc_layout_folder_trains_at_smoke_scale(tmp_path):
    """The VOC folder trains the smoke segmenter on its 21 classes."""
    from stlib import config as cfg
    from stlib.experiments.assemble import build_task
    from stlib.train.loop import train_and_evaluate
    root = _voc(tmp_path / "VOC2012")
    p = cfg.load_params(SEG, ["data.source=voc", f"data.voc_root={root}", "data.val_split=val",
                              "train.steps=4", "train.eval_every=4"])
    task = build_task(p, progress=False)
    m = train_and_evaluate(task, tmp_path / "run", progress=False)
    assert m["status"] == "complete" and 0 <= m["mIoU"] <= 1 and task.num_classes == 21


def test_the_paper_segmentation_preset_is_the_published_b7_nasfpn():
    """params/paper/segmentation.yaml builds REFERENCE §7.4's EfficientNet-B7 NAS-FPN segmenter
    (71M published, counting the unused EfficientNet classifier head: 71.73M derived; 67.5M
    without it), abstractly at 512 px: nothing paper-sized is allocated."""
    import jax
    import jax.numpy as jnp

    from stlib import config as cfg
    from stlib.models.registry import create_model
    from stlib.train.state import count_params
    p = cfg.load_params("params/paper/segmentation.yaml")
    model = create_model(p.model, num_classes=21)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False),
                            jax.ShapeDtypeStruct((1, 512, 512, 3), jnp.float32))
    n = count_params(shapes["params"])
    assert n == pytest.approx(71.73e6 - 4.20e6, rel=0.01)     # §7.4 without the classifier head (4.20M)
    logits = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), shapes,
                            jax.ShapeDtypeStruct((1, 512, 512, 3), jnp.float32))
    assert logits.shape == (1, 128, 128, 21)                  # stride 4 (REFERENCE §7.3)


def test_noisy_masks_drop_small_objects_relabel_and_coarsen_deterministically():
    from stlib.data.segmentation import MaskNoise, noisy_mask
    mask = np.zeros((64, 64), np.uint8)
    mask[4:30, 4:30] = 1                 # large object
    mask[40:43, 40:43] = 2               # small object (9 px < 1% of 4096)
    mask[50:60, 10:40] = 3
    drop_all = MaskNoise(coarsen_frac=0, drop_small=1.0, wrong_class=0.0)
    out = noisy_mask(mask, drop_all, 4, seed=0)
    assert (out[40:43, 40:43] == 0).all() and (out[4:30, 4:30] == 1).all() and (out[50:60, 10:40] == 3).all()
    relabel = noisy_mask(mask, MaskNoise(coarsen_frac=0, drop_small=0.0, wrong_class=1.0), 4, seed=0)
    assert relabel[10, 10] not in (0, 1) and relabel[55, 20] not in (0, 3) and (relabel == 0).sum() == (mask == 0).sum()
    coarse = noisy_mask(mask, MaskNoise(coarsen_frac=1 / 8, drop_small=0.0, wrong_class=0.0), 4, seed=0)
    assert coarse.shape == mask.shape and (coarse != mask).any() and (coarse[8:24, 8:24] == 1).all()
    again = noisy_mask(mask, MaskNoise(), 4, seed=[0, 7])
    assert (again == noisy_mask(mask, MaskNoise(), 4, seed=[0, 7])).all()


def test_the_world_as_pascal_voc_precise_train_noisy_aug_and_the_noise_measured():
    from stlib.data.segmentation import mask_agreement, world_segmentation_source
    split = {s: world_segmentation_source("smoke", 0, s) for s in ("train", "aug", "aug_truth", "train_aug", "val")}
    assert {s: len(v) for s, v in split.items()} == {"train": 4, "aug": 28, "aug_truth": 28, "train_aug": 32, "val": 16}
    assert not set(split["train"].files) & set(split["aug"].files)
    assert split["train_aug"].files == split["train"].files + split["aug"].files
    exact = mask_agreement(split["aug_truth"], split["aug_truth"])
    noisy = mask_agreement(split["aug"], split["aug_truth"])
    assert exact["mIoU"] == 1.0 and 0.3 < noisy["mIoU"] < 0.95 and noisy["images"] == 28
    i = 0
    hw = split["aug"].load_image(i).shape[:2]
    assert (split["train_aug"].load_mask(4 + i, hw) == split["aug"].load_mask(i, hw)).all()   # aug part stays noisy
    assert (split["train_aug"].load_mask(0, hw) == split["train"].load_mask(0, hw)).all()


def test_a_segmentation_student_learns_from_its_teachers_pseudo_masks(tmp_path, capsys):
    """Sec. 3.2's segmentation self-training at smoke scale: a teacher segmenter, its multi-scale
    pseudo masks of the world's aug images in a store, a student that starts from the teacher on
    half human, half pseudo batches with the normalized loss, and its provenance in metrics.json."""
    import jax

    from stlib import config as cfg
    from stlib.experiments.assemble import build_task, train
    from stlib.pseudo.store import PseudoLabelStore
    from stlib.pseudo.teacher import TeacherRun
    teacher_dir = tmp_path / "runs" / "teacher"   # sure of the background at least, so some pixels pass 0.5
    train(cfg.load_params(SEG, ["train.steps=20", "train.base_lr=0.1", "train.eval_every=20",
                                "train.checkpoint_every=20"]), teacher_dir, progress=False)
    p = cfg.load_params(SEG, [f"self_train.teacher={teacher_dir}", "self_train.unlabeled=world:aug",
                              "train.batch_size=8"])
    from stlib.experiments.runs import check_before_work
    check_before_work(p)       # a study checks a segmentation student's teacher as a segmentation run
    task = build_task(p, progress=False)
    assert task.train_data.sizes == {"human": 4, "pseudo": 4}
    state = task.init_state()
    teacher = TeacherRun(teacher_dir, head="segmentation").variables()
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), teacher["params"])
    batch = task.train_data.train_batch(0, 8, 0)
    pseudo = batch["pseudo"]["mask"]
    assert pseudo.shape == (4, 64, 64) and (pseudo != IGNORE_LABEL).any()
    from stlib.train import sharding
    state, m = task.train_step(state, sharding.shard_batch(batch, task.mesh))
    m = jax.device_get(m)
    for k in ("human/loss", "pseudo/loss", "pseudo/weight"):
        assert np.isfinite(m[k]), k
    np.testing.assert_allclose(m["loss"], m["human/loss"], rtol=1e-5)   # first step: equal averages
    metrics = train(p, tmp_path / "runs" / "student", progress=False)
    pl = metrics["pseudo_labels"]
    assert pl["source"] == "world:aug" and pl["threshold"] == 0.5 and pl["images"] == 28
    store = PseudoLabelStore.open(REPO / pl["store"] if not pl["store"].startswith("/") else pl["store"])
    assert store.complete and len(store.load()) == 28 and store.meta["scales"] == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    # the self-training study's explorer step finds the student's store and runs pseudo_masks.ipynb on it
    from stlib.experiments.self_training import explore_stores
    rows = [{"run_dir": str(tmp_path / "runs" / d)} for d in ("teacher", "student")]
    (out,) = explore_stores(rows)
    assert out == store.root / "explorer"
    for f in ("gallery.png", "quality.png", "class_iou.png", "quality.json", "pseudo_masks.ipynb"):
        assert (out / f).is_file(), f
    report = json.loads((out / "quality.json").read_text())
    assert report["images_measured"] == 28 and report["truth"] == "world smoke aug (truth)"
    assert report["quality"][0]["threshold"] == 0.0 and report["quality"][0]["covered"] == 1.0
    # `stlib pseudo-label` with a segmentation teacher reopens that store and measures it
    from stlib.cli import main
    assert main(["pseudo-label", str(teacher_dir), "--unlabeled", "world:aug", "--quiet"]) == 0
    out_text = capsys.readouterr().out
    assert f"store: {store.root}" in out_text and "28 images (0 skipped)" in out_text
    assert "against world smoke aug (truth)" in out_text and "| 0.50 |" in out_text
    assert main(["pseudo-label", str(teacher_dir), "--unlabeled", "world:aug", "--coco", "x.json"]) != 0
    assert "--coco are for box stores" in capsys.readouterr().err
    # a teacher that started from an init (its params.yaml names the init's folder) labels from its
    # own checkpoint, without the init resolved again
    pfile = teacher_dir / "params.yaml"
    pfile.write_text(pfile.read_text().replace("init: rand", f"init: {teacher_dir}"))
    assert cfg.load_params(pfile).model.init == str(teacher_dir)
    assert main(["pseudo-label", str(teacher_dir), "--unlabeled", "world:val", "--quiet"]) == 0, capsys.readouterr().err
    assert "against world smoke val" in capsys.readouterr().out
    detector = next(d for d in sorted((REPO / "outputs" / "runs").iterdir()) if d.name.startswith("mini-retinanet"))
    with pytest.raises(cfg.ParamsError, match="must be a segmentation run"):
        build_task(cfg.load_params(SEG, [f"self_train.teacher={detector}", "self_train.unlabeled=world:aug"]),
                   progress=False)


def test_a_segmentation_students_run_id_covers_its_unlabeled_images(tmp_path):
    """`stlib train` addresses a run by its params, data, teacher and unlabeled images: for a
    segmentation student these are the world's aug images (not a detection pool)."""
    from stlib import config as cfg
    from stlib.experiments import identity
    from stlib.experiments.assemble import train
    teacher_dir = tmp_path / "teacher"
    train(cfg.load_params(SEG, ["train.steps=3", "train.eval_every=3", "train.checkpoint_every=3"]), teacher_dir,
          progress=False)
    ident = identity.run_identity(cfg.load_params(SEG, [f"self_train.teacher={teacher_dir}",
                                                        "self_train.unlabeled=world:aug"]))
    other = identity.run_identity(cfg.load_params(SEG, [f"self_train.teacher={teacher_dir}",
                                                        "self_train.unlabeled=world:val"]))
    assert ident["unlabeled"] != other["unlabeled"] and ident["teacher"] == other["teacher"]
    assert not identity.is_provisional(ident)
