"""The second version's object-centric images (issue 17): the scenes' look, a dominant object,
fine-grained classes under the detection classes, boxed hidden truth; the first world unchanged."""
import json

import numpy as np
import pytest

from stlib.data import world as W
from stlib.pseudo import quality as q
from stlib.pseudo.labels import ImageLabels
from stlib.pseudo.sources import WorldPoolSource

V2 = dict(object_images="scene", cls_fine_textures=(1, 2, 3), cls_extra_objects=(0, 2),
          cls_object_size_frac=(0.3, 0.5), cls_clutter_per_image=(0, 3))


def test_the_first_world_keeps_its_folder_and_manifest():
    """Adding the second version's fields changed nothing of the first: the same folder names as
    the records' worlds, and a spec dict without the new fields."""
    assert W.world_root(W.world_spec("mini"), "/c").name == "v1-mini-s0-9a3557a113"
    assert W.world_root(W.world_spec("smoke"), "/c").name == "v1-smoke-s0-6d6d0bb642"
    assert not set(W.spec_dict(W.world_spec("mini"))) & {"object_images", "cls_fine_textures", "cls_extra_objects"}
    assert W.world_version(W.world_spec("mini")) == 1
    assert W.world_root(W.world_spec("mini", **V2), "/c").name.startswith("v2-mini-s0-")
    assert W.world_version(W.world_spec("mini", cls_fine_textures=(1,))) == 2


def test_the_vocabulary_splits_detection_shapes_into_fine_classes():
    spec = W.world_spec("mini", **V2)
    cats = W.classification_categories(spec)
    assert len(cats) == 10 * 3 + (spec.num_cls_categories - 10)
    assert [c["name"] for c in cats[:4]] == ["circle/stripes", "circle/checker", "circle/dots", "triangle/stripes"]
    assert cats[0]["detection_category"] == 1 and cats[3]["detection_category"] == 3
    assert cats[30]["name"] == "pentagon" and cats[30]["detection_category"] is None
    assert [c["index"] for c in cats] == list(range(len(cats)))
    with pytest.raises(ValueError, match="cls_fine_textures"):
        W.world_spec("mini", cls_fine_textures=(1, 1))
    with pytest.raises(ValueError, match="object_images"):
        W.world_spec("mini", object_images="other")
    with pytest.raises(ValueError, match="needs object_images='scene'"):
        W.world_spec("mini", cls_extra_objects=(0, 2))


def test_object_scenes_are_pure_and_box_their_detection_objects():
    spec = W.world_spec("mini", cls_image_size=96, **V2)
    cats = W.classification_categories(spec)
    extra = 0
    for i in range(40):
        img, label, inst = W.render_object_scene(spec, "pools/objects", i)
        img2, label2, inst2 = W.render_object_scene(spec, "pools/objects", i)
        assert np.array_equal(img, img2) and label == label2 and img.shape == (96, 96, 3)
        det = cats[label]["detection_category"]
        if det is not None:   # the dominant object is drawn on top: whole, and the largest detection object
            areas = [(c, int(m.sum())) for c, m in inst]
            assert (det - 1) // 2 in [c for c, _ in areas]
            assert max(a for _, a in areas) == max(a for c, a in areas if c == (det - 1) // 2)
        extra += len(inst) - (det is not None)
    assert extra > 5   # other detection-class objects appear beside the dominant one


def test_a_second_version_world_writes_boxed_hidden_truth_and_pseudo_labels_are_scored(tmp_path):
    root = W.ensure_world("smoke", 0, cache_dir=tmp_path, workers=1, progress=False, **V2)
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["spec"]["object_images"] == "scene" and manifest["version"] == 2 and root.name.startswith("v2-")
    assert manifest["detection_to_classification"]["1"] == [0, 1, 2]
    cls_train = json.loads((root / "classification" / "train.json").read_text())
    assert len(cls_train["categories"]) == 60 and len(cls_train["images"]) == 2 * 60
    hidden = json.loads((root / "hidden" / "objects.json").read_text())
    boxes = json.loads((root / "hidden" / "objects_boxes.json").read_text())
    assert [im["file_name"] for im in boxes["images"]] == [im["file_name"] for im in hidden["images"]]
    cats = {c["index"]: c for c in hidden["categories"]}
    for im in hidden["images"]:
        det = cats[im["label"]]["detection_category"]
        assert im["detection_class"] == (0 if det is None else (det + 1) // 2)
    assert boxes["annotations"] and all(a["bbox"][2] > 0 for a in boxes["annotations"])

    source = WorldPoolSource(root, "objects", scale="smoke")
    assert source.hidden_gt == root / "hidden" / "objects_boxes.json"
    # labels equal to the hidden boxes score precision and recall 1; agreement counts in-vocabulary images
    by_image = {}
    for a in boxes["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    labels = []
    for i, im in enumerate(boxes["images"]):
        anns = by_image.get(im["id"], [])
        yxyx = [[a["bbox"][1], a["bbox"][0], a["bbox"][1] + a["bbox"][3], a["bbox"][0] + a["bbox"][2]] for a in anns]
        labels.append(ImageLabels(i, im["file_name"], im["height"], im["width"], np.asarray(yxyx).reshape(-1, 4),
                                  [(a["category_id"] + 1) // 2 for a in anns], [0.9] * len(anns), ""))
    row = next(r for r in q.quality_table(labels, source.hidden_gt) if r["threshold"] == 0.5)
    assert row["precision"] == 1.0 and row["recall"] == 1.0
    agree = q.object_pool_agreement(labels, source.hidden_labels, 10)
    n_in = sum(im["detection_class"] > 0 for im in hidden["images"])
    assert agree["in_vocab_images"] == n_in and agree["in_vocab_with_box_share"] == 1.0
    assert agree["oov_images"] == len(hidden["images"]) - n_in


def test_the_candidate_worlds_are_mini_worlds_and_their_calibration_specs_load():
    from stlib import config as cfg
    from stlib.experiments import study as st
    for size in (64, 96):
        spec = W.world_spec(f"mini2-{size}")
        assert (spec.image_size, spec.cls_image_size, spec.num_train, W.world_version(spec)) == (size, size, 4800, 2)
        study = st.load_study(f"params/mini/study_calibrate_s4_{size}.yaml")
        pairs = st.doubling_pairs(study)    # a chain: each schedule against twice its steps
        assert pairs[0] == ("S4 2000", "S4 4000") and all(b == c for (_, b), (c, _) in zip(pairs, pairs[1:]))
        p = st.cell_params(study, "S4 4000", 0, resolve=False)
        assert (p.scale, p.data.world_scale, p.data.image_size, p.augment.policy) == ("mini", f"mini2-{size}", size, "s4")
    with pytest.raises(cfg.ParamsError, match="scale is smoke but data.world_scale is 'mini2-64'"):
        cfg.load_params("params/smoke/retinanet.yaml", ["data.world_scale=mini2-64"])
