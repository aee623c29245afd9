"""Pseudo labels for self-training (Sec. 3.2): a teacher run labels unlabeled images.

  teacher.py   the teacher: a finished detection run, checked before any work
  sources.py   unlabeled images: the world's pools, image folders, tfds splits
  label.py     `make_pseudo_labels`: batched inference with evaluation's post-processing
  store.py     `PseudoLabelStore`: atomic, resumable shards; COCO export; room for masks
  labels.py    `ImageLabels`, one image's pseudo labels
  data.py      the store as the student's pseudo-labeled detection source (hard threshold)
  quality.py   precision / recall / AP against the pools' hidden ground truth
"""
