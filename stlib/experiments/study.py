"""Studies: a grid of runs (cells x seeds) from one spec, shared through the run cache.

A study spec (`params/<scale>/study_*.yaml`) names a base params preset, overrides for all
of its runs, cells (a label and that cell's overrides) and seeds:

    name: mini-inits-20pct
    notebook: train.ipynb          # the notebook that makes each run
    base: params/mini/retinanet.yaml
    overrides: [data.label_fraction=0.2]
    cells:
      Rand Init: [model.init=rand]
      ImageNet Init: [model.init=imagenet]
    seeds: [0, 1, 2]
    seed_key: train.seed
    metric: AP
    convergence: {baseline: Rand Init, fraction: 0.9}   # optional
    doubling: {threshold: 0.005}   # optional: the doubling check, see below

Each (cell, seed) is an ordinary run addressed by its resolved params, so a run another
study (or a person) already made is found in `outputs/runs/` and not made again, and an
interrupted study resumes where it stopped. A cell override `key=@Other` names the run
folder of cell `Other` with the same seed (a self-training student names its teacher), and
`compare: {baseline: Other}` reports every cell minus that cell, seed by seed. `summarize` gives each cell's mean, spread
and a 95% t confidence interval over seeds; `convergence_summary` the steps to a fraction
of the final metric and the speed-up over the baseline cell, seed by seed.

`doubling: {threshold: t}` is the convergence check of a schedule: every pair of cells whose
params are the same but for `train.steps`, one twice the other, is reported as "converged" when
doubling the steps gains less than `t` in the metric (mean over the seeds both have); the
0.005 AP (0.5 points) of issue 17 is our choice, the paper says only "until converged".
`doubling_summary` gives the pairs, their gains and the verdicts.
"""
from __future__ import annotations

import dataclasses
import io
import json
import math
import textwrap
from pathlib import Path

import yaml

from stlib import config as cfg
from stlib import paths, registry
from stlib.devices import worker_env
from stlib.experiments import convergence as conv
from stlib.experiments import identity, records, runs
from stlib.experiments.inits import resolve_init
from stlib.experiments.records import comparison_markdown, is_record
from stlib.io import lock_holder, write_bytes_atomic, write_json_atomic, write_text_atomic
from stlib.pseudo.label import store_dir_for

NOTEBOOKS = ("train.ipynb", "pretrain.ipynb")


@dataclasses.dataclass(frozen=True)
class Study:
    name: str
    base: str
    cells: dict
    seeds: tuple = (0,)
    notebook: str = "train.ipynb"
    description: str = ""
    overrides: tuple = ()
    seed_key: str = "train.seed"
    metric: str = "AP"
    convergence: dict | None = None
    compare: dict | None = None
    doubling: dict | None = None
    path: str = ""


def load_study(path) -> Study:
    """Reads and checks a study spec; errors name the file and the key. Every cell's params
    are loaded too, so a bad override fails here, before any run starts."""
    path = paths.preset(path)   # a file, or a shipped spec by name (mini/self_train)
    return make_study(read_spec(path), path)


def read_spec(path) -> dict:
    """A spec file's YAML mapping; a missing file or bad YAML is an error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise cfg.ParamsError(f"study spec not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise cfg.ParamsError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise cfg.ParamsError(f"{path}: a spec must be a mapping of keys, got {type(raw).__name__}")
    return raw


def make_study(raw: dict, path) -> Study:
    """A checked `Study` from a spec's mapping (`load_study`; `stlib.experiments.paper` builds one
    from a result spec); errors name `path` and the key."""
    fields = {f.name for f in dataclasses.fields(Study)} - {"path"}
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise cfg.ParamsError(f"{path}: unknown key(s) {unknown} (known: {', '.join(sorted(fields))})")
    for key in ("name", "base", "cells"):
        if key not in raw:
            raise cfg.ParamsError(f"{path}: missing required key {key!r}")
    cells = raw["cells"]
    if not isinstance(cells, dict) or not cells:
        raise cfg.ParamsError(f"{path}: 'cells' must be a mapping of label -> list of overrides")
    for label, ov in cells.items():
        if not isinstance(ov, list) or not all(isinstance(o, str) for o in ov):
            raise cfg.ParamsError(f"{path}: cells.{label} must be a list of 'key=value' strings, got {ov!r}")
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise cfg.ParamsError(f"{path}: 'seeds' must be a non-empty list of integers, got {seeds!r}")
    if raw.get("notebook", "train.ipynb") not in NOTEBOOKS:
        raise cfg.ParamsError(f"{path}: notebook must be one of {NOTEBOOKS}, got {raw.get('notebook')!r}")
    conv_spec = raw.get("convergence")
    if conv_spec is not None:
        if not isinstance(conv_spec, dict) or conv_spec.get("baseline") not in cells:
            raise cfg.ParamsError(f"{path}: convergence.baseline must name a cell ({', '.join(cells)}), "
                                  f"got {conv_spec!r}")
        frac = conv_spec.get("fraction", 0.9)
        if not isinstance(frac, (int, float)) or not 0 < frac <= 1:
            raise cfg.ParamsError(f"{path}: convergence.fraction must be in (0, 1], got {frac!r}")
    cmp_spec = raw.get("compare")
    if cmp_spec is not None and (not isinstance(cmp_spec, dict) or cmp_spec.get("baseline") not in cells):
        raise cfg.ParamsError(f"{path}: compare.baseline must name a cell ({', '.join(cells)}), got {cmp_spec!r}")
    for label, ov in cells.items():
        for o in ov:
            ref = o.split("=", 1)[1].strip() if "=" in o else ""
            if ref.startswith("@") and ref[1:] not in cells:
                raise cfg.ParamsError(f"{path}: cells.{label}: {o!r} refers to no cell (known: {', '.join(cells)})")
            if ref.startswith("@") and list(cells).index(ref[1:]) >= list(cells).index(label):
                raise cfg.ParamsError(f"{path}: cells.{label}: {o!r} must refer to a cell listed before it")
    study = Study(name=raw["name"], base=str(raw["base"]), cells={k: tuple(v) for k, v in cells.items()},
                  seeds=tuple(seeds), notebook=raw.get("notebook", "train.ipynb"),
                  description=raw.get("description", ""), overrides=tuple(raw.get("overrides", [])),
                  seed_key=raw.get("seed_key", "train.seed"), metric=raw.get("metric", "AP"),
                  convergence=conv_spec, compare=cmp_spec, doubling=raw.get("doubling"), path=str(path))
    for label in study.cells:          # strict params of every cell, before any work
        cell_params(study, label, study.seeds[0], resolve=False)
    if study.doubling is not None:
        threshold = study.doubling.get("threshold") if isinstance(study.doubling, dict) else None
        if set(study.doubling or {}) - {"threshold"} or not isinstance(threshold, (int, float)) or threshold <= 0:
            raise cfg.ParamsError(f"{path}: doubling must be {{threshold: <a positive {study.metric} gain>}}, "
                                  f"got {study.doubling!r}")
        if not doubling_pairs(study):
            raise cfg.ParamsError(f"{path}: doubling: no two cells differ only in train.steps, one twice the other")
    return study


def doubling_pairs(study: Study) -> list[tuple[str, str]]:
    """(short cell, long cell) for every two cells whose params (seed 0's, teachers unresolved)
    are the same but for `train.steps`, the long one's twice the short one's."""
    plain = {}
    for label in study.cells:
        d = cfg.to_dict(cell_params(study, label, study.seeds[0], resolve=False))
        steps = d["train"].pop("steps")
        plain[label] = (steps, d)
    return [(a, b) for a in study.cells for b in study.cells
            if plain[b][0] == 2 * plain[a][0] and plain[a][1] == plain[b][1]]


def _flat_dict(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat_dict(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def doubling_chains(study: Study) -> list[dict]:
    """The study's schedule chains: cells grouped by their params (seed 0's, teachers unresolved)
    but `train.steps`, for each group holding a doubling pair. Each is {"name": the settings that
    tell the chains apart ("augment.policy=s4, data.label_fraction=0.2"; "all cells" for one chain),
    "cells": labels by steps, "steps": their steps}."""
    groups: list[tuple[dict, list]] = []
    for label in study.cells:
        d = cfg.to_dict(cell_params(study, label, study.seeds[0], resolve=False))
        steps = d["train"].pop("steps")
        flat = _flat_dict(d)
        group = next((g for g in groups if g[0] == flat), None)
        if group is None:
            groups.append((flat, [(steps, label)]))
        else:
            group[1].append((steps, label))
    paired = {c for pair in doubling_pairs(study) for c in pair}
    groups = [g for g in groups if any(label in paired for _, label in g[1])]
    keys = sorted(set().union(*(g[0] for g in groups))) if groups else []
    differing = [k for k in keys if len({repr(g[0].get(k)) for g in groups}) > 1]
    return [{"name": ", ".join(f"{k}={flat.get(k)}" for k in differing) or "all cells",
             "cells": [label for _, label in sorted(cells)], "steps": [s for s, _ in sorted(cells)]}
            for flat, cells in groups]


def _base_path(study: Study) -> Path:
    """The base preset: a file, under the root, or shipped with the package (`paths.preset`)."""
    return paths.preset(study.base)


def cell_run_dir(study: Study, label: str, seed: int, outputs=None) -> Path:
    """The run folder of one (cell, seed)."""
    return runs.resolve_run_dir(cell_params(study, label, seed, outputs), outputs=outputs)


def _reference(study: Study, override: str, seed: int, outputs) -> str:
    """`key=@Cell` -> `key=<that cell's run folder for this seed>` (repo-relative when inside
    the repo): a student names its teacher, the teacher of the same seed."""
    key, value = override.split("=", 1)
    value = value.strip()
    if not value.startswith("@"):
        return override
    return f"{key}={_repo_relative(cell_run_dir(study, value[1:], seed, outputs))}"


def cell_params(study: Study, label: str, seed: int, outputs=None, resolve: bool = True) -> cfg.Params:
    """The params of one run: base <- study overrides <- the cell's <- the seed. A cell override
    `key=@Other` names the run folder of cell `Other` with the same seed (e.g. a teacher)."""
    cell = [_reference(study, o, seed, outputs) if "=@" in o.replace(" ", "") else o for o in study.cells[label]]
    overrides = [*study.overrides, *cell, f"{study.seed_key}={seed}"]
    try:
        p = cfg.load_params(_base_path(study), overrides)
        registry.check_choices(p)
    except cfg.ParamsError as e:
        raise cfg.ParamsError(f"{study.path or study.name}: cell {label!r}: {e}") from None
    return resolve_init(p, outputs, require=False) if resolve else p


def _referenced(study: Study) -> set:
    """Cells another cell names with `@Cell` (their runs are used as teachers, so need checkpoints)."""
    return {o.split("=", 1)[1].strip()[1:] for ov in study.cells.values() for o in ov
            if "=" in o and o.split("=", 1)[1].strip().startswith("@")}


def _has_best_checkpoint(run_dir: Path) -> bool:
    best = run_dir / "checkpoints" / "best"
    return best.is_dir() and any(c.name.isdigit() for c in best.iterdir())


def plan(study: Study, outputs=None) -> list[dict]:
    """One row per (cell, seed): its run folder and whether it is complete.

    A run is looked for in the run cache (`outputs`), then among the records (`outputs/` of the
    repository) under the same run id, which covers params, data and starting checkpoints; a
    record is used for its numbers only (`from: record`). A run another cell refers to (a
    teacher) is complete only in the cache with its checkpoint, since records keep none. A run
    whose teacher or init does not exist yet has a provisional id and is not complete."""
    rows = []
    referenced = _referenced(study)
    for label in study.cells:
        for seed in study.seeds:
            p = cell_params(study, label, seed, outputs)
            run_dir = runs.resolve_run_dir(p, outputs=outputs)
            provisional = identity.is_provisional(identity.run_identity(p))
            done = not provisional and records.complete_metrics(run_dir) is not None
            if done and label in referenced:
                done = _has_best_checkpoint(run_dir)
            source = "cache"
            if not done and not provisional and label not in referenced:
                rec = records.record_run(run_dir.name)
                if rec is not None:
                    run_dir, done, source = rec, True, "record"
            rows.append({"cell": label, "seed": seed, "run_id": run_dir.name, "run_dir": str(run_dir),
                         "complete": done, "from": source})
    return rows


def run_study(study: Study, outputs=None, progress: bool = True, direct: bool = False, jobs: int = 1) -> list[dict]:
    """Makes every run of the study that is not complete yet (in cell order); returns `results`.

    With `jobs` > 1 the runs go to that many worker processes at once (`run_parallel`), e.g.
    several small runs sharing one large accelerator, or one process per GPU."""
    from tqdm.auto import tqdm
    for scale, names in world_inits(study).items():   # ImageNet / ImageNet++ / SimCLR runs the cells start from
        runs.ensure_world_inits(scale, names, outputs, progress, direct)
    if jobs > 1:
        run_parallel(study, outputs, jobs, progress)
        return results(study, outputs)
    depth = _depths(study)
    for level in sorted(set(depth.values())):   # teachers first: their students' ids need their checkpoints
        todo = _unique([r for r in plan(study, outputs) if not r["complete"] and depth[r["cell"]] == level])
        for r in tqdm(todo, desc=f"{study.name} (wave {level})", unit="run", disable=not progress or not todo):
            runs.run(cell_params(study, r["cell"], r["seed"], outputs, resolve=False), study.notebook, outputs,
                     progress, direct)
    return results(study, outputs)


def world_inits(study: Study) -> dict[str, tuple]:
    """{world scale: the named inits (`model.init: imagenet | imagenet++ | simclr`) its cells start
    from}, for cells on the embedded world, where those inits are runs made here; elsewhere a
    named init is a public checkpoint (`stlib.experiments.inits`)."""
    out: dict = {}
    for label in study.cells:
        p = cell_params(study, label, study.seeds[0], resolve=False)
        if p.data.source == "world" and p.model.init in cfg.NAMED_INITS:
            out.setdefault(p.data.world_scale, set()).add(p.model.init)
    return {k: tuple(sorted(v)) for k, v in out.items()}


def _unique(todo: list[dict]) -> list[dict]:
    """The first row of each run: cells with the same params share one run (Figure 1's Augment-S4
    point is its 100% one), which is made once."""
    seen: set = set()
    return [r for r in todo if not (r["run_id"] in seen or seen.add(r["run_id"]))]


def _depths(study: Study) -> dict:
    """Cell -> how many `@Cell` references deep it is (0: refers to no cell)."""
    depth = {}
    for label, ov in study.cells.items():   # references point to earlier cells (load_study checks)
        refs = [o.split("=", 1)[1].strip()[1:] for o in ov if "=" in o and o.split("=", 1)[1].strip().startswith("@")]
        depth[label] = 1 + max((depth[r] for r in refs), default=-1)
    return depth


def _pool(commands: list[tuple[list, Path]], jobs: int, desc: str, progress: bool) -> None:
    """Runs the commands, `jobs` at a time, each logging to its file; a failure is an error naming its log."""
    import subprocess
    import time
    from tqdm.auto import tqdm
    env = worker_env(jobs)
    pending, running, failed = list(commands), [], []
    bar = tqdm(total=len(commands), desc=desc, unit="job", disable=not progress or not commands)
    while pending or running:
        while pending and len(running) < jobs:
            cmd, log = pending.pop(0)
            log.parent.mkdir(parents=True, exist_ok=True)
            f = open(log, "w")
            running.append((subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=paths.REPO_ROOT,
                                             env=env), f, log))
        time.sleep(1.0)
        for item in list(running):
            proc, f, log = item
            if proc.poll() is not None:
                f.close()
                running.remove(item)
                bar.update(1)
                if proc.returncode:
                    failed.append(f"{log} (exit {proc.returncode})")
    bar.close()
    if failed:
        raise RuntimeError(f"{len(failed)} job(s) failed; see {', '.join(failed)}")


def run_parallel(study: Study, outputs=None, jobs: int = 2, progress: bool = True) -> None:
    """Makes the missing runs with `jobs` worker processes (`stlib train <params> --direct`), wave
    by wave: cells that refer to no other cell first, then their dependents. Before a wave of
    self-training students, each pseudo-label store they need is made once (`stlib pseudo-label`),
    so students sharing a teacher and a pool do not label it twice."""
    import sys
    import time
    outputs = Path(outputs or runs.default_outputs())
    depth = _depths(study)
    for level in sorted(set(depth.values())):
        todo = _unique([r for r in plan(study, outputs) if not r["complete"] and depth[r["cell"]] == level])
        busy = [r for r in todo if lock_holder(r["run_dir"])]   # being made by another process (another study)
        todo = [r for r in todo if r not in busy]
        if not todo and not busy:
            continue
        stores, train = {}, []
        for r in todo:
            p = cell_params(study, r["cell"], r["seed"], outputs)
            run_dir = runs.prepare_run_dir(p, outputs)
            st = p.self_train
            if st.teacher and st.unlabeled and p.model.head != "segmentation":   # a segmenter labels in its run
                store = store_dir_for(p)
                if store not in stores:
                    stores[store] = ([sys.executable, "-m", "stlib.cli", "pseudo-label", st.teacher, "--unlabeled",
                                      st.unlabeled, "--min-score", str(st.store_min_score), "--nms", st.nms,
                                      "--max-images", str(st.max_images), "--threshold", str(st.score_threshold),
                                      "--quiet"], store.parent / f"{store.name}.log")
            train.append(([sys.executable, "-m", "stlib.cli", "train", str(run_dir / "params.yaml"), "--direct",
                           "--quiet", "--outputs", str(outputs)], run_dir / "run.log"))
        _pool(list(stores.values()), jobs, f"{study.name}: pseudo labels", progress)
        _pool(train, jobs, f"{study.name}: runs (wave {level})", progress)
        while any(lock_holder(r["run_dir"]) for r in busy):   # runs another process is making
            time.sleep(5)


def results(study: Study, outputs=None, require: bool = True) -> list[dict]:
    """One row per (cell, seed) with the run's final metrics; a missing run is an error naming
    it (with `require`), or left out."""
    rows = []
    for r in plan(study, outputs):
        if not r["complete"]:
            if require:
                raise FileNotFoundError(f"study {study.name}: run {r['run_id']} ({r['cell']}, seed {r['seed']}) "
                                        "is not complete; run the study first")
            continue
        m = json.loads((Path(r["run_dir"]) / "metrics.json").read_text())
        rows.append({**r, study.metric: m.get(study.metric), "best_step": m.get("best_step"),
                     "last_step": m.get("last_step"), "train_seconds": m.get("train_seconds")})
    return rows


def t_interval(values, confidence: float = 0.95) -> float:
    """Half-width of the two-sided t confidence interval of the mean (nan for one value)."""
    from scipy import stats
    n = len(values)
    if n < 2:
        return float("nan")
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return float(stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n))


def summarize(study: Study, rows: list[dict]) -> list[dict]:
    """Per cell: n, mean, sample std, min, max and the 95% CI half-width of the metric over seeds."""
    out = []
    for label in study.cells:
        vals = [r[study.metric] for r in rows if r["cell"] == label and r.get(study.metric) is not None]
        if not vals:
            continue
        n, mean = len(vals), sum(vals) / len(vals)
        sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else float("nan")
        out.append({"cell": label, "n": n, "mean": mean, "std": sd, "min": min(vals), "max": max(vals),
                    "ci95": t_interval(vals), "values": vals})
    return out


def paired_summary(study: Study, rows: list[dict]) -> list[dict]:
    """`compare.baseline`: each other cell minus the baseline, seed by seed (paired), with mean,
    sample std and the 95% t interval of the differences (e.g. student AP - teacher AP)."""
    base = (study.compare or {}).get("baseline")
    if base is None:
        return []
    ref = {r["seed"]: r[study.metric] for r in rows if r["cell"] == base and r.get(study.metric) is not None}
    out = []
    for label in study.cells:
        if label == base:
            continue
        diffs = {r["seed"]: r[study.metric] - ref[r["seed"]] for r in rows
                 if r["cell"] == label and r.get(study.metric) is not None and r["seed"] in ref}
        if not diffs:
            continue
        vals = [diffs[s] for s in sorted(diffs)]
        n, mean = len(vals), sum(vals) / len(vals)
        sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else float("nan")
        out.append({"cell": label, "baseline": base, "n": n, "mean_diff": mean, "std": sd, "ci95": t_interval(vals),
                    "min": min(vals), "max": max(vals), "seeds": sorted(diffs), "diffs": vals})
    return out


def convergence_summary(study: Study, rows: list[dict]) -> dict:
    """Seed by seed, each cell's steps to `fraction` of its own final metric and its speed-up
    over the baseline cell of the same seed (`stlib.experiments.convergence.speedup`)."""
    spec = study.convergence or {}
    base, frac = spec.get("baseline"), float(spec.get("fraction", 0.9))
    curves = {(r["cell"], r["seed"]): conv.eval_curve(r["run_dir"], study.metric) for r in rows}
    per_run = []
    for (label, seed), curve in curves.items():
        row = {"cell": label, "seed": seed, "final": conv.final_value(curve[1]),
               "steps_to_fraction": conv.steps_to_fraction(*curve, frac)}
        if base is not None and (base, seed) in curves:
            sp = conv.speedup(curves[(base, seed)], curve, frac)
            row.update({f"speedup_vs_{base}": sp["speedup"], "level": sp["level"], "steps_to_level": sp["other_steps"]})
        per_run.append(row)
    cells = {}
    for label in study.cells:
        mine = [r for r in per_run if r["cell"] == label]
        if not mine:
            continue
        c = {"steps_to_fraction": [r["steps_to_fraction"] for r in mine]}
        if base is not None:
            c["speedup"] = [r.get(f"speedup_vs_{base}") for r in mine]
        cells[label] = c
    return {"fraction": frac, "baseline": base, "runs": per_run, "cells": cells}


def doubling_summary(study: Study, rows: list[dict]) -> list[dict]:
    """Per doubling pair: both cells' steps, the metric of each over the seeds both have, the gain
    (long - short) seed by seed and its mean, and `converged` = mean gain < the threshold."""
    threshold = float((study.doubling or {}).get("threshold", 0.0))
    value = {(r["cell"], r["seed"]): r[study.metric] for r in rows if r.get(study.metric) is not None}
    out = []
    for short, long in doubling_pairs(study):
        seeds = sorted(s for s in study.seeds if (short, s) in value and (long, s) in value)
        if not seeds:
            continue
        gains = [value[(long, s)] - value[(short, s)] for s in seeds]
        steps = [cell_params(study, c, seeds[0], resolve=False).train.steps for c in (short, long)]
        mean_gain = sum(gains) / len(gains)
        out.append({"short": short, "long": long, "steps": steps[0], "long_steps": steps[1], "seeds": seeds,
                    "short_values": [value[(short, s)] for s in seeds], "long_values": [value[(long, s)] for s in seeds],
                    "gains": gains, "mean_gain": mean_gain, "threshold": threshold,
                    "converged": mean_gain < threshold})
    return out


def _save_png(fig, path, dpi: int) -> None:
    """`fig` as a PNG at `path`, written atomically; nothing when `path` is None."""
    if path is not None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
        write_bytes_atomic(path, buf.getvalue())


def chain_summary(study: Study, rows: list[dict]) -> list[dict]:
    """Per schedule chain (`doubling_chains`): the mean metric at each schedule (seeds that have it),
    the gain of each doubling, and `converged_at`: the fewest steps whose doubling gains less than
    the threshold (None when no doubling so far does; then `longest` is how far the chain got)."""
    pairs = {(x["short"], x["long"]): x for x in doubling_summary(study, rows)}
    value: dict = {}
    for r in rows:
        if r.get(study.metric) is not None:
            value.setdefault(r["cell"], []).append(r[study.metric])
    out = []
    for chain in doubling_chains(study):
        done = [(s, c) for s, c in zip(chain["steps"], chain["cells"]) if c in value]
        doublings = [pairs[(a, b)] for a in chain["cells"] for b in chain["cells"] if (a, b) in pairs]
        converged = sorted(x["steps"] for x in doublings if x["converged"])
        out.append({"name": chain["name"], "cells": [c for _, c in done], "steps": [s for s, _ in done],
                    "values": [sum(value[c]) / len(value[c]) for _, c in done],
                    "doublings": [{"steps": x["steps"], "long_steps": x["long_steps"], "gain": x["mean_gain"],
                                   "converged": x["converged"]} for x in sorted(doublings, key=lambda x: x["steps"])],
                    "converged_at": converged[0] if converged else None,
                    "longest": max((s for s, _ in done), default=None)})
    return out


def plot_chains(study: Study, rows: list[dict], path=None):
    """One panel per schedule chain (`doubling_chains`): each schedule's validation curve (mean over
    seeds), its final value and the doubling verdicts in the legend."""
    import matplotlib
    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np
    chains = chain_summary(study, rows)
    n = len(chains)
    ncols = min(3, max(n, 1))
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(6.0, 4.6 * ncols), 3.4 * nrows + 0.4), squeeze=False,
                             sharey=True)
    thousands = matplotlib.ticker.FuncFormatter(lambda x, _: f"{x / 1000:g}k" if x >= 1000 else f"{x:g}")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, chain in zip(axes.flat, chains):
        for i, (label, steps, v) in enumerate(zip(chain["cells"], chain["steps"], chain["values"])):
            curves = [conv.eval_curve(r["run_dir"], study.metric) for r in rows if r["cell"] == label]
            common = sorted(set.intersection(*(set(s.tolist()) for s, _ in curves)))
            mean = [np.mean([c[1][list(c[0]).index(x)] for c in curves]) for x in common]
            ax.plot(common, mean, color=colours[i % len(colours)], lw=2, marker="o", ms=2.5,
                    label=f"{steps:,} steps: {v:.3f}")
        verdict = (f"converged at {chain['converged_at']:,} steps" if chain["converged_at"] is not None
                   else f"not converged by {chain['longest']:,}" if chain["longest"] else "no runs yet")
        gains = ", ".join(f"{d['gain'] * 100:+.1f}" for d in chain["doublings"])
        ax.set_title(f"{chain['name']}\n{verdict}" + (f" (doubling gains {gains} pts)" if gains else ""), fontsize=8)
        ax.set_xlabel("training step")
        ax.xaxis.set_major_formatter(thousands)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[:, 0]:
        ax.set_ylabel(f"validation {study.metric}")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(textwrap.fill(study.description or study.name, 18 * ncols + 40), fontsize=9)
    fig.tight_layout()
    _save_png(fig, path, dpi=110)
    return fig


def plot_convergence(study: Study, rows: list[dict], path=None, ax=None):
    """Validation metric over steps, one colour per cell (a line per seed, the mean bold);
    with a baseline: its `fraction`-of-final level dashed and each cell's mean speed-up in the legend."""
    import matplotlib
    if path is not None and ax is None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np
    summary = convergence_summary(study, rows) if study.convergence else None
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 4.2))
    else:
        fig = ax.figure
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, label in enumerate(study.cells):
        mine = [r for r in rows if r["cell"] == label]
        if not mine:
            continue
        col = colours[i % len(colours)]
        curves = [conv.eval_curve(r["run_dir"], study.metric) for r in mine]
        for s, v in curves:
            ax.plot(s, v, color=col, alpha=0.3, lw=1)
        legend = label
        if summary and summary["baseline"] != label:
            sp = [x for x in summary["cells"][label].get("speedup", []) if x is not None and np.isfinite(x)]
            if sp:
                legend += f" ({np.mean(sp):.1f}x faster)"
        common = sorted(set.intersection(*(set(s.tolist()) for s, _ in curves)))
        if common:
            mean = [np.mean([v[list(s).index(c)] for s, v in curves]) for c in common]
            ax.plot(common, mean, color=col, lw=2.2, marker="o", ms=3, label=legend)
    if summary and summary["baseline"]:
        base_final = [r["final"] for r in summary["runs"] if r["cell"] == summary["baseline"]]
        level = summary["fraction"] * float(np.mean(base_final))
        ax.axhline(level, color="grey", ls="--", lw=1,
                   label=f"{summary['fraction']:.0%} of {summary['baseline']}'s final {study.metric}")
    ax.set_xlabel("training step")
    ax.set_ylabel(f"validation {study.metric}")
    ax.set_title(study.description or study.name, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save_png(fig, path, dpi=120)
    return fig


def report_markdown(study: Study, rows: list[dict]) -> str:
    """The study's tables as markdown: per-cell mean +- std (95% CI, n), per-run values,
    and with a baseline the convergence speed-up."""
    lines = [f"# {study.name}", "", study.description, "",
             f"{study.metric} over seeds {list(study.seeds)} (mean, sample std, 95% t interval):", "",
             f"| cell | n | mean {study.metric} | std | 95% CI | min | max | per seed |",
             "|---|---|---|---|---|---|---|---|"]
    for s in summarize(study, rows):
        lines.append(f"| {s['cell']} | {s['n']} | {s['mean']:.4f} | {s['std']:.4f} | +-{s['ci95']:.4f} | "
                     f"{s['min']:.4f} | {s['max']:.4f} | {', '.join(f'{v:.4f}' for v in s['values'])} |")
    paired = paired_summary(study, rows)
    if paired:
        lines += ["", f"Paired differences, cell - {paired[0]['baseline']} of the same seed ({study.metric}; "
                  "x100 = points):", "",
                  "| cell | n | mean diff | std | 95% CI | min | max | per seed |", "|---|---|---|---|---|---|---|---|"]
        for d in paired:
            lines.append(f"| {d['cell']} | {d['n']} | {d['mean_diff']:+.4f} | {d['std']:.4f} | +-{d['ci95']:.4f} | "
                         f"{d['min']:+.4f} | {d['max']:+.4f} | {', '.join(f'{v:+.4f}' for v in d['diffs'])} |")
    if study.convergence:
        c = convergence_summary(study, rows)
        lines += ["", f"Convergence: steps to {c['fraction']:.0%} of the run's own final {study.metric}, and the "
                  f"speed-up = steps {c['baseline']} needs to reach {c['fraction']:.0%} of its final {study.metric} "
                  "/ steps this run needs to reach that level (same seed; curves linear between evaluations "
                  "from 0 at step 0):", "",
                  "| cell | seed | final | steps to fraction | steps to baseline level | speed-up |",
                  "|---|---|---|---|---|---|"]
        for r in c["runs"]:
            sp = r.get(f"speedup_vs_{c['baseline']}")
            lines.append(f"| {r['cell']} | {r['seed']} | {r['final']:.4f} | {r['steps_to_fraction']:.0f} | "
                         f"{r.get('steps_to_level', float('nan')):.0f} | "
                         f"{'' if sp is None else f'{sp:.2f}x'} |")
    if study.doubling:
        d = doubling_summary(study, rows)
        lines += ["", f"Doubling check: a schedule is converged when twice its steps gain less than "
                  f"{study.doubling['threshold']:.4f} {study.metric} (mean over seeds):", "",
                  f"| cell | steps | {study.metric} | 2x cell | 2x steps | 2x {study.metric} | gain | seeds | converged |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for x in d:
            mean = lambda v: sum(v) / len(v)
            lines.append(f"| {x['short']} | {x['steps']} | {mean(x['short_values']):.4f} | {x['long']} | "
                         f"{x['long_steps']} | {mean(x['long_values']):.4f} | {x['mean_gain']:+.4f} | "
                         f"{', '.join(map(str, x['seeds']))} | {'yes' if x['converged'] else '**no**'} |")
        chains = chain_summary(study, rows)
        if chains:
            lines += ["", f"Schedule chains (cells that differ only in `train.steps`), {study.metric} by schedule "
                      "and the first converged one:", "",
                      f"| chain | {study.metric} by steps | doubling gains | converged at |", "|---|---|---|---|"]
            for c in chains:
                by_steps = ", ".join(f"{s:,}: {v:.4f}" for s, v in zip(c["steps"], c["values"]))
                gains = ", ".join(f"{d['steps']:,} -> {d['long_steps']:,}: {d['gain']:+.4f}" for d in c["doublings"])
                verdict = (f"{c['converged_at']:,} steps" if c["converged_at"] is not None
                           else f"**not by {c['longest']:,}**" if c["longest"] else "no runs yet")
                lines.append(f"| {c['name']} | {by_steps} | {gains} | {verdict} |")
    lines += ["", "Runs:", ""] + [f"- {r['cell']}, seed {r['seed']}: `{r['run_id']}`" for r in rows]
    return "\n".join(lines) + "\n"


def _repo_relative(path) -> str:
    return paths.relative(path)


def write_report(study: Study, rows: list[dict], out_dir) -> Path:
    """<outputs>/studies/<name>/: report.md, results.json, convergence.png (when asked for), and where the
    study has a record, record_comparison.md (this report next to it)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "report.md", report_markdown(study, rows))
    shown = [{**r, "run_dir": _repo_relative(r["run_dir"])} for r in rows]
    payload = {"study": dataclasses.asdict(study), "runs": shown, "summary": summarize(study, rows),
               "paired": paired_summary(study, rows)}
    if study.convergence:
        payload["convergence"] = convergence_summary(study, rows)
        plot_convergence(study, rows, out_dir / "convergence.png")
    if study.doubling:
        payload["doubling"] = doubling_summary(study, rows)
        payload["chains"] = chain_summary(study, rows)
        plot_chains(study, rows, out_dir / "chains.png")
    write_json_atomic(out_dir / "results.json", payload)
    comparison = None if is_record(out_dir) else comparison_markdown(study, rows)
    if comparison:
        write_text_atomic(out_dir / "record_comparison.md", comparison)
    return out_dir
