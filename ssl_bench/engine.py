"""The one training loop shared by every method.

``prepare(spec)`` validates everything (method, dataset, data, split, config) *before* anything
is written; ``fit(run)`` then trains stage by stage:

    for each stage of the method (its share of the iteration budget):
        SGD (lr 0.01, momentum 0.9, wd 1e-4) over method.trainable_parameters(), poly decay 0.9
        for each iteration: sample labeled + unlabeled slices -> augment -> method.training_step
            -> backward (AMP optional) -> step -> auxiliary optimisers -> EMA hook
            -> log, resumable checkpoint, validation (final stage: best-on-val checkpoint);
            losses are read back from the device only for these (ssl_bench/step.py)
    test the best-on-val and the last weights on the test split -> metrics.json, MLflow

A run dir is resumable: a killed run restarts from ``checkpoints/latest.pt`` (stage, step,
optimiser, RNG and method state); a finished run is skipped unless ``force``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssl_bench.augment import Augmenter
from ssl_bench.cost import CostMeter, device_name
from ssl_bench.datasets.base import DataError, Split, atomic_write_text
from ssl_bench.registry import get_dataset_class, get_method_class, step_images
from ssl_bench.runconfig import RunSpec, TrainConfig, config_hash, resolve, resolved_dict
from ssl_bench.sampling import SlicePool, concat_pools, make_batch, make_pool, place_pools  # noqa: F401  (re-exported)
from ssl_bench.schedules import learning_rate
from ssl_bench.protocols import check_protocol_dataset
from ssl_bench.volumetric import check_method_3d, configure as configure_volumetric, is_volumetric
from ssl_bench.step import StepMonitor, StepRunner, TrainingDiverged, amp_settings, eager, prepare_modules


# -- roots -----------------------------------------------------------------------------------
def data_root(cli_value: str | Path | None = None) -> Path:
    return Path(cli_value or os.environ.get("SSL_BENCH_DATA") or Path.cwd() / "data").expanduser()


# -- preparation (no writes) -------------------------------------------------------------------
@dataclass
class PreparedRun:
    spec: RunSpec
    train_cfg: TrainConfig
    method_cfg: Any
    method_cls: type
    dataset: Any
    split: Split
    image_size: int
    run_dir: Path
    resolved: dict
    results_root: Path


def prepare(spec: RunSpec, data_root_dir: Path, results_root_dir: Path) -> PreparedRun:
    method_cls = get_method_class(spec.method)
    dataset_cls = get_dataset_class(spec.dataset)
    train_cfg, method_cfg = resolve(spec, method_cls, getattr(dataset_cls, "train_defaults", None))
    if spec.ratio is not None and not 0 < spec.ratio <= 1:
        raise ValueError(f"--ratio {spec.ratio} is out of range: use a fraction in (0, 1], e.g. 0.05")
    if spec.labeled is not None and spec.labeled < 1:
        raise ValueError(f"--labeled {spec.labeled} is out of range: give at least 1 labeled patient")
    dataset = dataset_cls(data_root_dir)
    split_kind = spec.split
    kwargs = dict(labeled=spec.labeled, ratio=spec.ratio, split_seed=spec.split_seed)
    if split_kind != "default":
        kwargs["split"] = split_kind
    split = with_validation(dataset.make_split(**kwargs), train_cfg.validation)
    if not split.labeled:
        raise DataError(f"the split of {spec.dataset} has no labeled training case; check --labeled/--ratio")
    image_size = train_cfg.image_size or getattr(dataset, "default_image_size", 256)
    check_protocol_dataset(spec.protocol, spec.dataset, is_volumetric(dataset))
    if is_volumetric(dataset):  # 3D: the run trains on patches (its "image size") and tests by sliding window
        check_method_3d(spec.method)
        image_size = configure_volumetric(dataset, train_cfg)
    elif train_cfg.patch_size or train_cfg.sw_stride or train_cfg.lcc:
        raise ValueError(f"patch_size, sw_stride and lcc apply to 3D datasets; {spec.dataset} is 2D")
    resolved = resolved_dict(spec, train_cfg, method_cfg)
    resolved["image_size"] = image_size
    resolved["split_name"] = split.meta.get("split", split_kind)
    abl = getattr(method_cfg, "ablation", "none")
    name = spec.method if abl in ("none", None, "") else f"{spec.method}-{abl}"
    protocol_tag = f"{resolved['protocol']}-v{resolved['protocol_version']}"
    run_dir = (results_root_dir / spec.dataset / spec.setting_slug / protocol_tag / name /
               f"seed{spec.seed}-split{spec.split_seed}-{config_hash(resolved)}")
    return PreparedRun(spec, train_cfg, method_cfg, method_cls, dataset, split, image_size,
                       run_dir, resolved, results_root_dir)


def with_validation(split: Split, validation: str) -> Split:
    """The split with the validation cases ``validation`` asks for: ``split`` keeps the dataset's;
    ``test`` validates on the test cases (the published LA selection: optimistic, said in every
    footnote); ``none`` has none (the best checkpoint is the last). Validation cases the dataset
    carved out of training (``meta["val_carved_from_train"]``) go back to the unlabeled pool then."""
    if validation == "split":
        return split
    unlabeled = list(split.unlabeled)
    if split.meta.get("val_carved_from_train"):
        unlabeled = sorted(set(unlabeled) | set(split.val))
    val = list(split.test) if validation == "test" else []
    return Split(split.labeled, unlabeled, val, split.test, {**split.meta, "validation": validation})


def run_name(spec: RunSpec, resolved: dict) -> str:
    """The MLflow run name: method / dataset / setting / seed / protocol (readable in the UI)."""
    split = f" split{spec.split_seed}" if spec.split_seed else ""
    return (f"{spec.method} / {spec.dataset} / {spec.setting} / seed{spec.seed}{split} / "
            f"{resolved['protocol']}-v{resolved['protocol_version']}")


# -- helpers -----------------------------------------------------------------------------------
def pick_device(name: str) -> torch.device:
    """The run's device. ``auto`` is CUDA where available, else the CPU, except in a sweep's GPU
    slot (``SSL_BENCH_GPU_SLOT``), where a job that sees no GPU is an error naming the slot and its
    ``CUDA_VISIBLE_DEVICES``; ``cuda`` without CUDA is always an error (never a silent CPU run)."""
    slot = os.environ.get("SSL_BENCH_GPU_SLOT")
    where = (f"sweep slot {slot!r} (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})"
             if slot else "this machine")
    if name == "auto":
        if slot and not torch.cuda.is_available():
            raise ValueError(f"{where}: this job sees no GPU, so it would train on the CPU; check the id with "
                             "`nvidia-smi -L` and the sweep's --gpus, or run the sweep with --gpus none")
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--set device={name}: CUDA is not available on {where}; use device=cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"--set device={name}: {where} sees {torch.cuda.device_count()} GPU(s); "
                         f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return dev


def default_threads() -> int:
    """CPU threads when ``threads`` is 0: ``OMP_NUM_THREADS`` where set (a sweep's slots set it),
    else the cores this process may use that the load average leaves free, at least one. Beside
    busy neighbours, OpenMP threads that wait for a taken core cost far more than they bring
    (``ssl-bench bench threads``; README "Speed"); on an idle machine this is every core."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        busy = os.getloadavg()[0]
    except OSError:
        busy = 0.0
    return max(1, min(cores, int(cores - busy + 0.5)))


def run_threads(cfg: TrainConfig) -> int:
    """The CPU threads a run uses: ``threads`` when set, else ``default_threads()``."""
    return cfg.threads if cfg.threads > 0 else default_threads()


STRICT_VAR = "SSL_BENCH_DETERMINISTIC"  # "strict": bit-identical CUDA runs (seed_everything)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and torch (every device). ``deterministic`` (the default) fixes cuDNN's
    algorithm choice, which makes CPU runs bit-identical and a resumed run equal an uninterrupted
    one there. On a GPU that is not enough: some backward kernels (bilinear upsampling,
    ``grid_sample``, adaptive pooling, ``index_put`` with accumulation) add in a varying order, and
    cuBLAS needs a fixed workspace. ``SSL_BENCH_DETERMINISTIC=strict`` asks for all of it:
    ``torch.use_deterministic_algorithms(True, warn_only=True)`` (a kernel with no deterministic
    version warns instead of failing) and ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (set here unless
    given; it must be set before the first cuBLAS call, so set it in the shell when in doubt).
    Slower; a switch, not the default."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    mode = os.environ.get(STRICT_VAR, "").strip().lower()
    if mode not in ("", "strict", "0", "off"):
        raise ValueError(f"{STRICT_VAR}={mode!r}: use strict (bit-identical CUDA runs) or leave it unset")
    if mode == "strict":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)


def stage_iterations(stages, total: int) -> list[int]:
    """Split ``total`` iterations by the stages' fractions (renormalised), summing to total."""
    fr = np.array([max(s.fraction, 0.0) for s in stages], dtype=float)
    fr = fr / fr.sum() if fr.sum() > 0 else np.full(len(stages), 1 / len(stages))
    its = np.floor(fr * total).astype(int)
    its[-1] += total - its.sum()
    return [max(int(i), 1) for i in its]


def atomic_torch_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default))


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    return str(o)


# -- the loop ----------------------------------------------------------------------------------
@dataclass
class FitResult:
    run_dir: Path
    status: str
    metrics: dict = field(default_factory=dict)
    skipped: bool = False


def fit(run: PreparedRun, *, tracking_uri: str | None = None, experiment: str | None = None,
        progress: bool = True, force: bool = False, console=None) -> FitResult:
    from ssl_bench import lock, mlflow_store, provenance, run_index, tracking
    from ssl_bench.evaluate import evaluate_cases, headline_metrics

    spec, cfg = run.spec, run.train_cfg
    run_dir = run.run_dir
    metrics_path = run_dir / "metrics.json"
    if metrics_path.exists() and not force:
        done = json.loads(metrics_path.read_text())
        if done.get("status") == "finished":
            return FitResult(run_dir, "finished", done, skipped=True)
    device = pick_device(cfg.device)
    amp_dtype, use_scaler = amp_settings(device, cfg.amp, cfg.amp_dtype)  # refused before any write
    if force and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoints").mkdir(exist_ok=True)

    # the split is persisted once; a resumed run must see the same one
    split_path = run_dir / "split.json"
    if split_path.exists():
        saved = Split.load(split_path)
        if (saved.labeled, saved.unlabeled, saved.val, saved.test) != (
                run.split.labeled, run.split.unlabeled, run.split.val, run.split.test):
            raise DataError(f"{split_path} differs from the split computed now (data changed?); "
                            "delete the run dir or use --force to start over")
    else:
        run.split.save(split_path)
    write_json(run_dir / "config.json", run.resolved)

    torch.set_num_threads(run_threads(cfg))
    seed_everything(spec.seed, cfg.deterministic)
    aug = Augmenter(cfg.augment)
    from ssl_bench.methods.base import MethodContext

    ctx = MethodContext(num_classes=run.dataset.num_classes, in_channels=1, backbone=cfg.backbone,
                        image_size=run.image_size, total_iterations=cfg.total_iterations, augment=aug,
                        generator=torch.Generator().manual_seed(spec.seed + 1), rampup=cfg.rampup,
                        dice_form=cfg.dice_form)
    method = run.method_cls(run.method_cfg, ctx).to(device)
    stages = method.stages()
    its = stage_iterations(stages, cfg.total_iterations)

    # data: labeled / unlabeled slice pools at training size
    size = run.image_size
    lb_set = run.dataset.load_slices(run.split.labeled, size)
    ulb_set = None
    if method.fully_supervised:
        lb_pool = concat_pools(lb_set, run.dataset.load_slices(run.split.unlabeled, size))
    else:
        lb_pool = make_pool(lb_set)
    ulb_pool = None
    draw_unlabeled = not method.supervised_only or cfg.draw_unlabeled
    if draw_unlabeled:
        ulb_set = run.dataset.load_slices(run.split.unlabeled, size)
        ulb_pool = make_pool(ulb_set)
        if not len(ulb_pool) and not method.supervised_only:
            raise DataError(f"{spec.method} needs unlabeled data but the split has none; lower --labeled/--ratio")
    # the batch as sampled: supervised-only methods may fill it with labeled slices (field)
    step_lb, _ = step_images(spec.method, cfg.labeled_bs, cfg.unlabeled_bs, cfg.supervised_whole_batch)
    batch_cfg = dataclasses.replace(cfg, labeled_bs=step_lb) if step_lb != cfg.labeled_bs else cfg
    if cfg.sampling == "device":  # gather and augment batches where the networks run
        place_pools([lb_pool, ulb_pool], device)

    tags = {
        "method": spec.method, "dataset": spec.dataset, "setting": spec.setting,
        "seed": str(spec.seed), "split_seed": str(spec.split_seed), "split": run.resolved["split_name"],
        "ablation": method.ablation_tag(), "run_dir": str(run_dir),
        "variant": str(getattr(run.method_cfg, "variant", "") or ""),
        "git_commit": provenance.git_commit(), "status": "running",
        "protocol": run.resolved["protocol"], "protocol_version": str(run.resolved["protocol_version"]),
        "report_checkpoint": cfg.report_checkpoint,
    }
    if hasattr(method, "augment_tag"):
        tags["augment"] = method.augment_tag()
    tags["device"] = device_name(device)
    params = dict(run.resolved)
    params["package_versions"] = provenance.package_versions()
    write_json(run_dir / "tags.json", tags)
    write_json(run_dir / "environment.json", {"git_commit": tags["git_commit"],
                                              "package_versions": params["package_versions"],
                                              "off_lock": {k: {"installed": a, "lock": b} for k, (a, b)
                                                           in lock.warn_if_off_lock().items()},
                                              "device": str(device)})
    tracker = tracking.RunTracker(run_dir, tracking_uri or mlflow_store.default_tracking_uri(run.results_root),
                                  experiment or f"ssl-bench/{spec.dataset}",
                                  run_name(spec, run.resolved), tags, params)
    tracker.start()

    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    compiled = prepare_modules(method, cfg.channels_last, cfg.compile)

    g = torch.Generator().manual_seed(spec.seed)
    state = {"stage": 0, "step": 0, "best_val": -1.0, "best_step": None, "global_step": 0}
    latest = run_dir / "checkpoints" / "latest.pt"
    resume = torch.load(latest, map_location=device, weights_only=False) if latest.exists() else None
    if resume is not None:
        state.update(resume["state"])
    meter = CostMeter(device, state.pop("cost", None))  # stage times and peaks of earlier attempts

    console_print = console.print if console is not None else print
    if resume is not None:
        console_print(f"resuming {run_dir} at stage {stages[state['stage']].name}, step {state['step']}")

    try:
        for si in range(state["stage"], len(stages)):
            stage = stages[si]
            n_it = its[si]
            method.set_stage(stage.name)
            ctx.total_iterations = n_it
            params_main = method.trainable_parameters()
            opt = torch.optim.SGD(params_main, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                  nesterov=cfg.nesterov)
            aux_opts = {k: method.make_aux_optimizer(k, v) for k, v in method.aux_parameters().items()}
            start = 0
            if resume is not None and resume["state"]["stage"] == si:
                _load_modules(method, resume["modules"])
                start = resume["state"]["step"]
                if start > 0:  # mid-stage: the optimiser state belongs to this stage
                    opt.load_state_dict(resume["optimizer"])
                    for k, o in aux_opts.items():
                        o.load_state_dict(resume["aux_optimizers"][k])
                    scaler.load_state_dict(resume["scaler"])
                restore_rng(resume["rng"], g, ctx.generator)
                method.load_extra_state(resume.get("method_state", {}))
                resume = None
            if start == 0:  # after the resume block: a stage-start hook sees the loaded weights
                method.on_stage_start(stage.name)
            final_stage = si == len(stages) - 1
            method.train(True)
            bar = _progress(progress, console, f"{spec.method} [{stage.name}]", n_it, start)
            meter.start_stage(stage.name)
            runner = StepRunner(method, opt, aux_opts, scaler, device, cfg.amp, amp_dtype, compiled, ctx.generator)
            monitor = StepMonitor(run_dir / "checkpoints")
            prefix = "train/" if len(stages) == 1 else f"train/{stage.name}/"
            for step in range(start, n_it):
                lr = learning_rate(cfg, step, n_it)
                for grp in opt.param_groups:
                    grp["lr"] = lr
                batch = make_batch(lb_pool, ulb_pool, batch_cfg, aug, g, device, draw_unlabeled)

                def record(out, step=step):
                    monitor.record(stage.name, step, out.loss, out.terms)
                    if not cfg.lean:  # the reference path: read back and check before the update
                        monitor.read()

                runner(batch, step, record)
                compiled = runner.compiled
                state.update(stage=si, step=step + 1)
                state["global_step"] += 1
                do_log = step % cfg.log_every == 0 or step == n_it - 1
                do_val = final_stage and ((step + 1) % cfg.val_every == 0 or step == n_it - 1) and run.split.val
                do_checkpoint = (step + 1) % cfg.checkpoint_every == 0 or step == n_it - 1
                if do_log or do_val or do_checkpoint:  # the only host sync: read back, check
                    values = monitor.read()
                if do_log:
                    tracker.log_metrics({prefix + k: v for k, v in {**values, "lr": lr}.items()},
                                        state["global_step"])
                if bar is not None:
                    bar.advance(values["loss"] if do_log else None)
                if do_val:
                    with eager(method):  # no inference graphs to compile (review D5)
                        res = evaluate_cases(method.predictor(), run.dataset, run.split.val, size, device,
                                             progress=False, batch_size=cfg.eval_batch_size,
                                             workers=eval_workers(cfg), resample=cfg.eval_resample,
                                             empty_asd=cfg.empty_asd)
                    method.train(True)
                    val_dice = float(res.summary["mean"]["dice"])
                    tracker.log_metrics({"val/dice/mean": val_dice}, state["global_step"])
                    if val_dice > state["best_val"]:
                        state["best_val"], state["best_step"] = val_dice, state["global_step"]
                        atomic_torch_save({"predictor": method.predictor().state_dict(),
                                           "val_dice": val_dice, "step": state["global_step"]},
                                          run_dir / "checkpoints" / "best.pt")
                    if bar is not None:
                        bar.note(f"val dice {val_dice:.3f} (best {state['best_val']:.3f})")
                if do_checkpoint:
                    nxt = dict(state, cost=meter.snapshot())
                    if step == n_it - 1:  # the next stage starts fresh
                        nxt.update(stage=si + 1, step=0)
                    _save_latest(latest, method, opt, aux_opts, scaler, g, ctx, nxt)
            if bar is not None:
                bar.close()
            tracker.log_metrics({f"time/{stage.name}_seconds": meter.end_stage()}, state["global_step"])
        # -- test ------------------------------------------------------------------------------
        atomic_torch_save({"predictor": method.predictor().state_dict(), "step": state["global_step"]},
                          run_dir / "checkpoints" / "last.pt")
        if not (run_dir / "checkpoints" / "best.pt").exists():
            shutil.copyfile(run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "best.pt")
        t_test = time.perf_counter()
        metrics = _test(run, method, device, tracker, progress)
        metrics["cost"] = meter.summary(cfg.total_iterations, run.image_size, cfg.labeled_bs, cfg.unlabeled_bs,
                                        time.perf_counter() - t_test)
        metrics["flat"].update(headline_metrics(metrics["flat"], cfg.report_checkpoint))
        metrics.update(status="finished", best_val_dice=state["best_val"], best_step=state["best_step"],
                       iterations=cfg.total_iterations, stages={s.name: n for s, n in zip(stages, its)})
        write_json(metrics_path, metrics)
        tracker.log_final(run_index.final_metrics(metrics), [metrics_path, run_dir / "config.json", split_path,
                                                    run_dir / "test_best_per_case.csv"])
        tracker.set_status("finished")
        return FitResult(run_dir, "finished", metrics)
    except BaseException as exc:
        msg = str(exc) if isinstance(exc, (TrainingDiverged, DataError)) else f"{type(exc).__name__}: {exc}"
        try:
            write_json(run_dir / "failure.json", {"status": "failed", "error": msg, "state": state})
            tracker.set_status("failed", message=msg)
        except Exception:
            pass
        raise


def eval_workers(cfg: TrainConfig) -> int:
    """Processes that score cases: ``eval_workers``, or one per thread this run uses
    (``run_threads``: a sweep's one-thread jobs score serially, and a GPU slot's jobs use the
    cores ``OMP_NUM_THREADS`` gives them, not one process per core each)."""
    if cfg.eval_workers > 0:
        return cfg.eval_workers
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(run_threads(cfg), cores)


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _test(run: PreparedRun, method, device, tracker, progress) -> dict:
    """Score the best-on-val and the last weights on the test split; once when they are the same
    weights (no validation, or the best was the last), the reports then written for both."""
    from ssl_bench.evaluate import evaluate_cases, mlflow_metrics, write_eval

    cfg = run.train_cfg
    predictor = method.predictor()
    flat: dict[str, float] = {}
    out: dict[str, Any] = {"test": {}}
    weights = {ckpt: torch.load(run.run_dir / "checkpoints" / f"{ckpt}.pt", map_location=device,
                                weights_only=False)["predictor"] for ckpt in ("best", "last")}
    out["best_is_last"] = same_weights(weights["best"], weights["last"])
    res = None
    for ckpt in ("best", "last"):
        if res is None or not out["best_is_last"]:
            predictor.load_state_dict(weights[ckpt])
            with eager(method):
                res = evaluate_cases(predictor, run.dataset, run.split.test, run.image_size, device,
                                     progress=progress, batch_size=cfg.eval_batch_size, workers=eval_workers(cfg),
                                     resample=cfg.eval_resample, empty_asd=cfg.empty_asd)
        write_eval(res, run.run_dir, f"test_{ckpt}")
        out["test"][ckpt] = res.summary
        flat.update(mlflow_metrics(res.summary, f"test/{ckpt}"))
    out["flat"] = flat
    return out


def _load_modules(method, states: dict) -> None:
    mods = method.modules()
    for k, sd in states.items():
        mods[k].load_state_dict(sd)


def rng_state(sampler: torch.Generator, method_generator: torch.Generator | None) -> dict:
    """Every random state a resumed run needs: the sampler's and the method's generators, torch's
    CPU RNG and, where CUDA is in use, the CUDA RNG of every device (dropout, input and feature
    noise drawn on the GPU come from it)."""
    out = {"sampler": sampler.get_state(), "torch": torch.get_rng_state()}
    if method_generator is not None:
        out["method"] = method_generator.get_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def restore_rng(saved: dict, sampler: torch.Generator, method_generator: torch.Generator | None) -> None:
    """Undo ``rng_state``. States come back as CPU byte tensors whatever ``map_location`` the
    checkpoint was loaded with (torch's setters take nothing else). A checkpoint written with
    CUDA and resumed without it (or the reverse) resumes with the RNGs it can restore."""
    sampler.set_state(saved["sampler"].cpu())
    torch.set_rng_state(saved["torch"].cpu())
    if method_generator is not None and "method" in saved:
        method_generator.set_state(saved["method"].cpu())
    if saved.get("cuda") is not None and torch.cuda.is_available():
        states = [t.cpu() for t in saved["cuda"]][:torch.cuda.device_count()]
        for index, state in enumerate(states):
            torch.cuda.set_rng_state(state, index)


def _save_latest(path, method, opt, aux_opts, scaler, g, ctx, state) -> None:
    atomic_torch_save({
        "modules": {k: m.state_dict() for k, m in method.modules().items()},
        "optimizer": opt.state_dict(),
        "aux_optimizers": {k: o.state_dict() for k, o in aux_opts.items()},
        "scaler": scaler.state_dict(),
        "rng": rng_state(g, ctx.generator),
        "method_state": method.extra_state(),
        "state": dict(state),
    }, path)


class _Bar:
    def __init__(self, console, desc, total, start):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[note]}"),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                 console=console, transient=False)
        self.task = self.progress.add_task(desc, total=total, completed=start, loss=float("nan"), note="")
        self.progress.start()

    def advance(self, loss=None):
        """One step; the shown loss changes when the loop has read one back (``loss`` not None)."""
        self.progress.update(self.task, advance=1, **({} if loss is None else {"loss": loss}))

    def note(self, text):
        self.progress.update(self.task, note=text)

    def close(self):
        self.progress.stop()


def _progress(enabled, console, desc, total, start):
    return _Bar(console, desc, total, start) if enabled else None
