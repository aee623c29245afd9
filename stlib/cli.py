"""`stlib` command line: run notebooks from params files, generate the embedded world.

  stlib train params/mini/retinanet.yaml [--set data.label_fraction=0.2 ...] [--direct]
  stlib pretrain params/mini/pretrain.yaml [--set ...] [--direct]
  stlib inits --scale mini         (ImageNet, ImageNet++ and SimCLR Inits of the embedded world)
  stlib study params/mini/study_inits.yaml   (cells x seeds, mean / spread / CI, convergence plot)
  stlib self-train [params/mini/self_train.yaml]   (teacher -> pseudo labels -> student, with a report)
  stlib pseudo-label RUN --unlabeled world:scenes [--nms soft_nms] [--coco out.json]
  stlib world --scale mini
  stlib zoo [--json] [--size 640] [--only efficientnet-b7 ...]
  stlib import-weights efficientnet-b7 noisy_student_b7.h5 weights/effb7-ns
  stlib show outputs/studies/mini-self-train   (headline numbers and figures of a run or study)
  stlib publish .cache/outputs/studies/mini-self-train   (a finished run or study -> outputs/, the records)

Runs, studies and pseudo-label stores go to the run cache (.cache/outputs/, or $STLIB_OUTPUTS);
outputs/ holds the repository's records, which only `stlib publish` writes.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from stlib import config as cfg
from stlib import errors, launch, paths, progress, registry
from stlib.config import SelfTrainParams
from stlib.data.world import ensure_world
from stlib.devices import MultiProcessError
from stlib.eval.postprocess import NMS_METHODS
from stlib.experiments import cost, paper
from stlib.data.segmentation import segmentation_truth
from stlib.experiments import study as st
from stlib.experiments.assemble import pseudo_mask_store
from stlib.experiments import runs
from stlib.experiments.inits import DESCRIPTIONS, resolve_init, world_init_dir
from stlib.experiments.records import publish
from stlib.experiments.runs import ensure_world_inits
from stlib.experiments.self_training import write_self_training_report
from stlib.experiments.show import show
from stlib.models import weight_import as wi
from stlib.models import zoo
from stlib.pseudo import quality
from stlib.pseudo.label import make_pseudo_labels
from stlib.pseudo.masks import mask_counts, mask_quality
from stlib.pseudo.sources import parse_unlabeled
from stlib.pseudo.store import check_export_thresholds
from stlib.pseudo.teacher import TeacherRun
from stlib.train import sharding
from stlib.viz.masks import quality_markdown


def _print_result(run_dir, result: dict) -> None:
    print(f"run: {run_dir}")
    if "mIoU" in result:   # a segmentation run
        print(f"mIoU {result['mIoU']:.4f}")
    else:
        keys = ("AP", "AP50", "AP75", "APs", "APm", "APl")
        print("COCO " + "  ".join(f"{k} {result[k]:.4f}" if result.get(k) is not None else f"{k} n/a" for k in keys))
    print(f"best step {result.get('best_step')}, last step {result.get('last_step')}, "
          f"stopped early: {result.get('stopped_early')}, devices: {result.get('devices')}")
    for split, stats in (result.get("data_stats") or {}).items():
        counted = ", ".join(f"{k}={v}" for k, v in sorted(stats.items()) if v)
        if counted:
            print(f"data ({split}): {counted}")


def _load(args):
    params = cfg.load_params(args.params, args.set)      # strict: fails here, before any work
    registry.check_choices(params)                        # every component named is registered
    return resolve_init(params, outputs=args.outputs)     # named inits -> their checkpoint folders


def cmd_train(args) -> int:
    run_dir, result = runs.run(_load(args), "train.ipynb", args.outputs, not args.quiet, args.direct)
    _print_result(run_dir, result)
    return 0


def cmd_pretrain(args) -> int:
    params = _load(args)
    run_dir, result = runs.run(params, "pretrain.ipynb", args.outputs, not args.quiet, args.direct)
    print(f"run: {run_dir}")
    print(_pretrain_summary(result))
    print(f"use it with: --set model.backbone={params.model.backbone} --set model.init={run_dir}")
    return 0


def _pretrain_summary(result: dict) -> str:
    if "linear_top1" in result:
        head = f"linear-probe top-1 {result['linear_top1']:.4f} (held-out; frozen backbone)"
    else:
        head = f"top-1 {result['top1']:.4f}  top-5 {result['top5']:.4f} (held-out)"
    return (f"{head}, best step {result['best_step']}, last step {result['last_step']}, "
            f"devices: {result['devices']}")


def cmd_inits(args) -> int:
    results = ensure_world_inits(args.scale, tuple(args.only or DESCRIPTIONS), outputs=args.outputs,
                                 progress=not args.quiet, direct=args.direct)
    print(f"named inits of the {args.scale} world (model.init: <name>):")
    for name, result in results.items():
        print(f"  {name:<11} {world_init_dir(name, args.scale, args.outputs)}")
        print(f"              {_pretrain_summary(result)}")
    return 0


def _run_study_spec(args, notebook: str, parameters: dict, self_training: bool) -> int:
    """`stlib study` / `stlib self-train`: the spec's missing runs, then its report(s), either in this
    process (--direct, --jobs) or through `notebooks/<notebook>` (papermill)."""
    from pathlib import Path
    spec = st.load_study(args.spec)   # every cell's params checked before any run
    outputs = Path(args.outputs) if args.outputs else runs.default_outputs()
    if getattr(args, "plan", False):
        print(cost.estimate_markdown(spec, cost.estimate(spec, outputs)))
        return 0
    out_dir = outputs / "studies" / spec.name
    if args.direct or getattr(args, "report_only", False):
        rows = (st.results(spec, outputs, require=False) if getattr(args, "report_only", False)
                else st.run_study(spec, outputs, progress=not args.quiet, direct=True, jobs=args.jobs))
        st.write_report(spec, rows, out_dir)
        if self_training:
            write_self_training_report(spec, rows, out_dir)
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        runs.execute(notebook, out_dir / notebook,
                     {"STUDY_FILE": paths.relative(args.spec), "OUTPUTS": paths.relative(outputs),
                      "PROGRESS": not args.quiet, **parameters}, log_output=True)
    print((out_dir / "report.md").read_text())
    if self_training:
        print((out_dir / "self_training.md").read_text())
    comparison = out_dir / "record_comparison.md"
    if comparison.is_file():
        print(comparison.read_text())
    print(f"report: {out_dir}  (publish it as a record with `stlib publish {out_dir}`)")
    return 0


def cmd_study(args) -> int:
    return _run_study_spec(args, "study.ipynb", {"RUN": True, "DIRECT": False}, self_training=False)


def cmd_reproduce(args) -> int:
    """The paper's results (notebooks/<item>.ipynb through papermill): each item's missing runs, then
    its table (or Figure 1) beside the paper's, with verdicts, in <outputs>/paper/<scale>/."""
    from pathlib import Path
    items = args.items or paper.available(args.scale)
    if not items:
        raise cfg.ParamsError(f"no result specs at the {args.scale} scale (params/{args.scale}/results/)")
    results = [paper.load_result(paper.result_spec(i, args.scale), seeds=args.seeds) for i in items]   # all checked first
    outputs = Path(args.outputs) if args.outputs else runs.default_outputs()
    if args.plan:
        print(paper.plan_markdown(results, paper.plan_results(results, outputs)))
        return 0
    out_dir = outputs / "paper" / args.scale
    (out_dir / "notebooks").mkdir(parents=True, exist_ok=True)
    for item in items:
        runs.execute(f"{item}.ipynb", out_dir / "notebooks" / f"{item}.ipynb",
                     {"SCALE": args.scale, "SEEDS": args.seeds, "TRAIN": not args.no_train, "JOBS": args.jobs,
                      "DIRECT": args.direct, "OUTPUTS": paths.relative(outputs), "PROGRESS": not args.quiet},
                     log_output=True)
        print((out_dir / f"{item}.md").read_text())
    print(f"results: {out_dir}  (records: `stlib publish {paths.relative(out_dir)}`, and its runs with "
          f"`stlib publish {paths.relative(outputs / 'studies')}/<study>` for each of "
          f"{', '.join(r.study.name for r in results)})")
    return 0


def _pseudo_masks(args) -> int:
    """`stlib pseudo-label` with a segmentation teacher: its multi-scale pseudo masks of the
    unlabeled images into a store, measured against the best masks known for them."""
    if args.out or args.coco:
        raise cfg.ParamsError("--out and --coco are for box stores; a store of pseudo masks lies beside its "
                              "teacher (outputs/pseudo_labels/<teacher>-<hash>)")
    root, store, teacher, _ = pseudo_mask_store(SelfTrainParams(teacher=args.teacher, unlabeled=args.unlabeled),
                                                progress=not args.quiet)
    labels = store.load()
    print(f"store: {root}")
    print(f"{len(labels)} images ({sum(1 for x in labels if x.skipped)} skipped)")
    truth = segmentation_truth(args.unlabeled, teacher.params.data)
    print(f"the pseudo masks against {truth.name}:")
    print(quality_markdown(mask_quality(mask_counts(labels, truth)["counts"])))
    print(f"see them: notebooks/pseudo_masks.ipynb with STORE_DIR={paths.relative(root)}")
    return 0


def cmd_pseudo_label(args) -> int:
    if TeacherRun.head_of(args.teacher) == "segmentation":
        return _pseudo_masks(args)
    check_export_thresholds(args.min_score, args.threshold)    # before any image is labelled
    NMS_METHODS.get(args.nms, what="--nms")
    shard = {} if args.shard_size is None else {"shard_size": args.shard_size}
    store = make_pseudo_labels(args.teacher, args.unlabeled, min_score=args.min_score, nms=args.nms,
                               max_images=args.max_images, store_dir=args.out, progress=not args.quiet, **shard)
    s = store.summary(args.threshold)
    print(f"store: {store.root}")
    print(f"{s['images']} images ({s['skipped']} skipped), {s['boxes']} boxes >= {args.threshold} "
          f"({s['boxes_per_image']:.2f} per image)")
    t = TeacherRun(args.teacher)
    source = parse_unlabeled(args.unlabeled, t.params.data.world_scale, t.params.data.world_seed,
                             t.params.data.tfds_data_dir)
    if source.hidden_gt is not None:
        rows = quality.quality_table(store.load(), source.hidden_gt)
        print("quality against the pool's hidden ground truth:")
        print(quality.format_quality_table(rows))
    if args.coco:
        store.export_coco(args.coco, min_score=args.threshold)
        print(f"COCO json (boxes >= {args.threshold}): {args.coco}")
    return 0


def cmd_self_train(args) -> int:
    return _run_study_spec(args, "self_train.ipynb", {}, self_training=True)


def cmd_show(args) -> int:
    print(show(args.path))
    return 0


def cmd_publish(args) -> int:
    written = publish(args.path, replace=args.replace)
    print(f"published {len(written)} file(s) into {paths.relative(paths.records_root())}/"
          + ("" if written else " (nothing new: already a record)"))
    for f in written[:20]:
        print(f"  {paths.relative(f)}")
    if len(written) > 20:
        print(f"  ... ({len(written)} in all)")
    return 0


def cmd_world(args) -> int:
    print(ensure_world(args.scale, args.seed))
    return 0


def cmd_zoo(args) -> int:
    rows = zoo.zoo_table(args.only or None, size=args.size, progress=not args.json and not args.quiet)
    print(json.dumps(rows, indent=2) if args.json else zoo.format_table(rows))
    return 0


def cmd_import_weights(args) -> int:
    meta = wi.import_weights(args.backbone, args.source, args.out, fmt=args.fmt, input_convention=args.input,
                             num_classes=args.num_classes)
    print(f"wrote {args.out}: {meta['backbone']} from {meta['format']} ({meta['num_params'] / 1e6:.2f}M params, "
          f"input {meta['input_convention']}, classifier head: {'yes' if meta['has_head'] else 'no'})")
    print(f"use it with: --set model.backbone={meta['backbone']} --set model.init={args.out}")
    return 0


def _run_options(parser, direct_help: str = "run in this process instead of through the notebook") -> None:
    parser.add_argument("--outputs", default=None, help="outputs folder (default: <repo>/outputs)")
    parser.add_argument("--direct", action="store_true", help=direct_help)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _processes_option(parser) -> None:
    parser.add_argument("--processes", type=int, default=1, metavar="N",
                        help="run as N JAX processes on this machine joined by jax.distributed, the multi-host code "
                             "path (implies --direct; the CPU's cores are split between them)")


def _without_processes(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--processes":
            skip = True
        elif not a.startswith("--processes="):
            out.append(a)
    return out


def _multiprocess(args, argv: list[str]) -> int | None:
    """`--processes N`: launches the command as N processes (`stlib.launch`). In a process of a
    multi-process job (JAX_NUM_PROCESSES > 1, or STLIB_MULTIHOST=1 on a pod), joins the job before
    any JAX work. Returns the launcher's exit status, or None to run the command here."""
    n = getattr(args, "processes", 1)
    joined = int(os.environ.get("JAX_NUM_PROCESSES", "1")) > 1 or os.environ.get("STLIB_MULTIHOST") == "1"
    if n > 1:
        if joined:
            raise MultiProcessError("--processes: this process is already one of a multi-process job (JAX_NUM_PROCESSES / "
                             "STLIB_MULTIHOST set); leave out --processes")
        child = _without_processes(argv)
        return launch.run_processes(child + ([] if "--direct" in child or not hasattr(args, "direct")
                                             else ["--direct"]), n)
    if n < 1:
        raise MultiProcessError(f"--processes must be at least 1, got {n}")
    if joined:
        if hasattr(args, "direct") and not args.direct:
            raise MultiProcessError("a multi-process job runs in its processes: add --direct (a notebook's kernel would be "
                             "another process, outside the job)")
        sharding.maybe_initialize_distributed()
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="stlib", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train and evaluate a detector (runs notebooks/train.ipynb via papermill)")
    t.add_argument("params", help="a params YAML file, e.g. params/mini/retinanet.yaml")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a param (repeatable)")
    _run_options(t)
    _processes_option(t)
    t.set_defaults(fn=cmd_train)
    pt = sub.add_parser("pretrain", help="pre-train a backbone on the classification set (runs notebooks/pretrain.ipynb)")
    pt.add_argument("params", help="a params YAML file, e.g. params/mini/pretrain.yaml")
    pt.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a param (repeatable)")
    _run_options(pt)
    _processes_option(pt)
    pt.set_defaults(fn=cmd_pretrain)
    it = sub.add_parser("inits", help="make the named inits (imagenet, imagenet++, simclr) of an embedded world "
                                      "that do not exist yet (pre-training runs through notebooks/pretrain.ipynb)")
    it.add_argument("--scale", default="mini", help="world scale: smoke | mini (presets in params/<scale>/)")
    it.add_argument("--only", nargs="*", default=None, metavar="NAME", help="just these (imagenet++ brings imagenet)")
    _run_options(it)
    it.set_defaults(fn=cmd_inits)
    sd = sub.add_parser("study", help="run a study spec's cells x seeds (reusing finished runs) and write its report "
                                      "(runs notebooks/study.ipynb)")
    sd.add_argument("spec", help="a study spec, e.g. params/mini/study_inits.yaml")
    _run_options(sd, "run in this process instead of through notebooks")
    sd.add_argument("--report-only", action="store_true", help="no new runs: report the ones that exist")
    sd.add_argument("--plan", action="store_true", help="no runs: list every run, which exist, and what the missing "
                                                     "ones cost (CPU time per step measured by finished runs here)")
    sd.add_argument("--jobs", type=int, default=1, help="with --direct: runs at once, in worker processes (on a GPU each gets 90%% / N of its memory)")
    sd.set_defaults(fn=cmd_study)
    rp = sub.add_parser("reproduce", help="the paper's Figure 1 and tables from runs, beside its numbers, with a "
                                          "verdict per claim (runs notebooks/<item>.ipynb)")
    rp.add_argument("items", nargs="*", metavar="ITEM",
                    help=f"any of {', '.join(paper.ITEMS)} (default: every item with a spec at the scale)")
    rp.add_argument("--scale", default="mini", help="smoke | mini | paper: the specs params/<scale>/results/<item>.yaml")
    rp.add_argument("--seeds", type=int, default=0, help="seeds 0..N-1 (default 0: each spec's seeds)")
    rp.add_argument("--jobs", type=int, default=1, help="runs at once, in worker processes (on a GPU each gets "
                                                       "90%% / N of its memory)")
    rp.add_argument("--no-train", action="store_true", help="no new runs: render the ones that exist")
    rp.add_argument("--plan", action="store_true", help="no runs: list every run the items need (each once), which "
                                                     "exist, and what the missing ones cost on this machine")
    _run_options(rp, "each run in the item's kernel instead of its own notebook")
    rp.set_defaults(fn=cmd_reproduce)
    sl = sub.add_parser("pseudo-label", help="label an unlabeled source with a finished detection run (the teacher) "
                                             "into a resumable pseudo-label store; a segmentation teacher writes "
                                             "pseudo masks (--unlabeled world:aug | voc:<split>)")
    sl.add_argument("teacher", help="the teacher's run folder, e.g. outputs/runs/mini-retinanet-<hash>")
    sl.add_argument("--unlabeled", required=True,
                    help="world:objects | world:scenes | folder:<path> (or a path) | tfds:<name>:<split>; "
                         "for a segmentation teacher world:aug | voc:<split>")
    st = SelfTrainParams()   # the defaults of self_train.*, written there once
    sl.add_argument("--min-score", type=float, default=st.store_min_score,
                    help=f"keep boxes down to this score (default {st.store_min_score}: self_train.store_min_score)")
    sl.add_argument("--threshold", type=float, default=st.score_threshold,
                    help=f"the training threshold to report (default {st.score_threshold}: self_train.score_threshold)")
    sl.add_argument("--nms", default=st.nms, help=f"the teacher's NMS method (default {st.nms}: self_train.nms)")
    sl.add_argument("--max-images", type=int, default=st.max_images, help="only the first N images (0 = all)")
    sl.add_argument("--shard-size", type=int, default=None,
                    help="images per shard (default: stlib.pseudo.label.DEFAULT_SHARD_SIZE)")
    sl.add_argument("--out", default=None, help="store folder (default: outputs/pseudo_labels/<teacher>-<hash>)")
    sl.add_argument("--coco", default=None, help="also export the boxes >= --threshold as COCO json here")
    sl.add_argument("--quiet", action="store_true", help="no progress bar")
    _processes_option(sl)
    sl.set_defaults(fn=cmd_pseudo_label)
    se = sub.add_parser("self-train", help="a self-training study: teacher -> pseudo labels -> student, with teacher "
                                           "vs student AP and pseudo-label quality (runs notebooks/self_train.ipynb)")
    se.add_argument("spec", nargs="?", default="params/mini/self_train.yaml",
                    help="a study spec whose students name their teacher cell (default: params/mini/self_train.yaml)")
    _run_options(se, "run in this process instead of through notebooks")
    se.add_argument("--report-only", action="store_true", help="no new runs: report the ones that exist")
    se.add_argument("--plan", action="store_true", help="no runs: list every run, which exist, and what the missing "
                                                     "ones cost (CPU time per step measured by finished runs here)")
    se.add_argument("--jobs", type=int, default=1, help="with --direct: runs at once, in worker processes (on a GPU each gets 90%% / N of its memory)")
    se.set_defaults(fn=cmd_self_train)
    w = sub.add_parser("world", help="generate (or find cached) the embedded world")
    w.add_argument("--scale", default="mini")
    w.add_argument("--seed", type=int, default=0)
    w.set_defaults(fn=cmd_world)
    z = sub.add_parser("zoo", help="parameters and multiply-adds of every registered model vs the published figures")
    z.add_argument("--json", action="store_true", help="print JSON instead of a markdown table")
    z.add_argument("--size", type=int, default=None, help="input size for every model (default: each one's published)")
    z.add_argument("--only", nargs="*", default=None, metavar="NAME", help="just these entries")
    z.add_argument("--quiet", action="store_true", help="no progress bar")
    z.set_defaults(fn=cmd_zoo)
    iw = sub.add_parser("import-weights", help="convert a public ImageNet checkpoint into an orbax one for model.init")
    iw.add_argument("backbone", help="stlib backbone name, e.g. efficientnet-b7, resnet50, resnet50-keras")
    iw.add_argument("source", help=".h5 / .keras (Keras), .safetensors / .pth (timm, torchvision)")
    iw.add_argument("out", help="a new folder for the orbax checkpoint")
    iw.add_argument("--from", dest="fmt", choices=("keras", "timm", "torchvision"), default=None,
                    help="source layout (default: from the file name)")
    iw.add_argument("--input", choices=("imagenet", "caffe", "unit"), default=None,
                    help="the input the checkpoint expects, folded into the stem (default: caffe for keras "
                         "ResNet50, what its Normalization layer says for a keras EfficientNet, imagenet "
                         "otherwise; SimCLR conversions want unit)")
    iw.add_argument("--num-classes", type=int, default=None, help="classifier classes (default: from the file)")
    iw.set_defaults(fn=cmd_import_weights)
    pb = sub.add_parser("publish", help="copy a finished run or study (its runs, stores' small files, report) from "
                                        "the run cache into outputs/, the repository's records")
    pb.add_argument("path", help="a run folder (.cache/outputs/runs/<id>), a study folder (.cache/outputs/studies/"
                                 "<name>), a pseudo-label store (.cache/outputs/pseudo_labels/<name>) or a results "
                                 "folder (.cache/outputs/paper/<scale>)")
    pb.add_argument("--replace", action="store_true", help="overwrite records that exist")
    pb.set_defaults(fn=cmd_publish)
    sh = sub.add_parser("show", help="a finished run's or study's headline numbers and where its figures are")
    sh.add_argument("path", help="a run folder (runs/<id>) or a study folder (studies/<name>), cache or records")
    sh.set_defaults(fn=cmd_show)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = ap.parse_args(argv)
    try:
        launched = _multiprocess(args, argv)
        if launched is not None:
            return launched
        # runs inside nested notebooks and worker processes report their progress here (stlib.progress)
        with progress.watch(enabled=not getattr(args, "quiet", False)):
            return args.fn(args)
    except Exception as e:   # noqa: BLE001 - errors the project raises on purpose become one line
        line = errors.one_line(e)
        if line is None:
            raise
        log = errors.write_log(e, paths.cache_root() / "logs")
        print(f"stlib {args.cmd}: {line}" + (f" [traceback: {log}]" if log else ""), file=sys.stderr)
        for detail in errors.details(e):   # a bug inside a notebook: where it happened
            print(f"  {detail}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
