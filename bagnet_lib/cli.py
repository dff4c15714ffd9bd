"""`python -m bagnet_lib …`: data download|audit|split|synthetic, train, cache-logits, sweep, blackout, imagenet,
reproduce, seeds.

A user error exits with status 2 and a one-paragraph message, never a traceback. `train`, `cache-logits`,
`sweep`, `blackout` and `imagenet` also run under `torchrun` (docs/distributed.md): each rank runs the command, rank 0
alone writes and prints, and an error is printed once, by rank 0.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from bagnet_lib.bench import BENCHMARKS
from bagnet_lib.blackout.imagenet import StreamSettings
from bagnet_lib.data.imagenet import DEFAULT_WORKERS
from bagnet_lib.errors import UserError
from bagnet_lib.nets.profiles import PROFILES


def _add_run_args(p: argparse.ArgumentParser, profile_required: bool = False) -> None:
    p.add_argument("--run-dir", required=True, help="run directory (created if missing)")
    p.add_argument("--profile", choices=sorted(PROFILES), default=None if profile_required else "cpu",
                   required=profile_required, help="settings of the run (default: cpu)")
    p.add_argument("--data-dir", default=None, help="dataset folder (default: $BAGNET_DATA, then ./data/flowers)")
    p.add_argument("--manifest", default=None, help="use this path,split CSV instead of a new split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="where to compute (default: CUDA when there is a GPU); under torchrun cuda means NCCL, cpu gloo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bagnet_lib", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="get, check and split a dataset").add_subparsers(dest="data_command", required=True)
    d = data.add_parser("download", help="download a flowers dataset (needs internet): TensorFlow's flower_photos, "
                                         "or the paper's own data and split (--source cs229)")
    d.add_argument("--source", choices=["tf", "cs229"], default="tf",
                   help="tf: TensorFlow's flower_photos (3,670 images, a fresh split); cs229: the paper's repository's "
                        "flowers_tvtsplit (4,242 images and its exact split, content SHA-256 checked)")
    d.add_argument("--dest", default=None, help="where to put it (default: data/flowers, or data/flowers_cs229)")
    d.add_argument("--url", default=None)
    d.add_argument("--timeout", type=float, default=10.0)
    a = data.add_parser("audit", help="list every problem file (non-images, unreadable, duplicates, label conflicts)")
    a.add_argument("--data-dir", default=None)
    a.add_argument("--json", action="store_true", help="print the report as JSON on stdout (progress on stderr)")
    s = data.add_parser("split", help="write a train/val/test split CSV")
    s.add_argument("--data-dir", default=None)
    s.add_argument("--out", required=True)
    s.add_argument("--manifest", default=None, help="take the split from this path,split CSV")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--keep-conflicts", action="store_true", help="keep duplicate groups filed under several classes")
    g = data.add_parser("synthetic", help="generate the embedded synthetic flowers dataset")
    g.add_argument("--out", default="data/synthetic")
    g.add_argument("--n-per-class", type=int, default=240)
    g.add_argument("--image-size", type=int, default=128)
    g.add_argument("--seed", type=int, default=0)

    t = sub.add_parser("train", help="train one model in a run directory (resumes if interrupted)")
    t.add_argument("--model", required=True, help="resnet50, bagnet9, bagnet17 or bagnet33")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="replace a profile field for this run directory, e.g. --set epochs=2 (repeatable)")
    _add_run_args(t)
    c = sub.add_parser("cache-logits", help="store a trained model's patch logits for one split")
    c.add_argument("--model", default="bagnet33")
    c.add_argument("--split", default="test", choices=["train", "val", "test"])
    _add_run_args(c)
    w = sub.add_parser("sweep", help="evaluate blackout masks × aggregations on cached patch logits")
    w.add_argument("--model", default="bagnet33")
    w.add_argument("--kinds", nargs="+", default=["random", "checkerboard", "raster"])
    w.add_argument("--drop-fracs", nargs="+", type=float, default=[0.25, 0.5, 0.75])
    w.add_argument("--seeds", type=int, default=30, help="number of random masks per setting")
    w.add_argument("--aggregations", nargs="+", default=["mean", "zero"])
    w.add_argument("--out", default=None, help="CSV path (default RUN_DIR/results/sweep.csv)")
    _add_run_args(w)
    k = sub.add_parser("blackout", help="the course's blackout experiments (notebook 04's), each to "
                                        "results/blackout_<name>.csv; under torchrun the pixel passes are sharded")
    k.add_argument("--model", default=None, help="the BagNet to study (default: the one trained in the run)")
    k.add_argument("--experiments", nargs="+", default=None,
                   help="paper curve structured aggregations channel pixel (default: all)")
    _add_run_args(k)
    b = sub.add_parser("bench", help="benchmarks: sweep (cache vs recompute), sparse (compute only kept patches), train "
                                     "(step speed), evaluation (compiled vs eager evaluation passes), precision (bf16 vs fp32 accuracy), ddp (world size 2 against 1), imagenet "
                                     "(the streaming ImageNet pass: speed, sweep cost, memory against N)")
    b.add_argument("name", choices=BENCHMARKS)
    b.add_argument("--json", default=None, help="also write the result as JSON to this path")
    b.add_argument("--quick", action="store_true", help="a small version (under a minute), used by the tests")
    b.add_argument("--from-json", default=None, help="do not measure: read an earlier result from this JSON file")
    b.add_argument("--device", choices=["cpu", "cuda"], default=None, help="imagenet: where the pass runs (default: CUDA "
                                                                             "when there is a GPU)")
    b.add_argument("--readme", default=None,
                   help="rewrite the <!-- bench-NAME --> block (README or docs/ beside it) from the result")
    u = sub.add_parser("tune", help="a tuning run: train with some profile fields replaced, record it in "
                                    "results/tuning/<profile>.json")
    u.add_argument("--name", required=True, help="the run's name in the tuning table")
    u.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="replace a profile field, e.g. --set image_size=160 (repeatable)")
    u.add_argument("--models", nargs="+", default=["resnet50", "bagnet33"])
    u.add_argument("--readme", default=None, help="rewrite the <!-- tuning --> block (docs/profiles.md beside this README) afterwards")
    u.add_argument("--run-dir", default=None, help="run directory (default runs/tune/<name>)")
    u.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    u.add_argument("--data-dir", default=None)
    u.add_argument("--manifest", default=None)
    u.add_argument("--seed", type=int, default=0)
    u.add_argument("--no-progress", action="store_true")
    i = sub.add_parser("imagenet", help="the blackout study on an ImageNet validation folder with the published nets, "
                                        "streaming and resumable, also under torchrun (docs/imagenet.md)")
    i.add_argument("--val-dir", default=os.environ.get("IMAGENET_VAL"),
                   help="the validation folder, <wnid>/*.JPEG (default: $IMAGENET_VAL)")
    i.add_argument("--model", default="bagnet33", choices=["bagnet9", "bagnet17", "bagnet33", "resnet50"])
    i.add_argument("--weights", default="imagenet",
                   help="imagenet: the published checkpoint (torch.hub cache, downloaded if missing, SHA-256 checked); "
                        "or a checkpoint file (its head sets the class count)")
    i.add_argument("--out", default="runs/imagenet", help="outputs go to OUT/<model>/ (default runs/imagenet)")
    i.add_argument("--masks", nargs="+", default=list(StreamSettings.kinds),
                   help="patch mask kinds (random, checkerboard, raster, center, border, block, topk, bottomk)")
    i.add_argument("--drop-fracs", nargs="+", type=float, default=list(StreamSettings.drop_fracs))
    i.add_argument("--seeds", type=int, default=StreamSettings.seeds, help="random masks per kind and fraction")
    i.add_argument("--aggregations", nargs="+", default=list(StreamSettings.aggregations))
    i.add_argument("--channels", nargs="*", default=list(StreamSettings.channel_kinds),
                   help="channel masks (the paper's code): random, alternating; none with an empty list")
    i.add_argument("--pixel", nargs="*", type=float, default=[],
                   help="drop fractions of pixel blackout (8 px tiles, a mask per image); each one more forward pass")
    i.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="fp32 (TF32 off; the published numbers' precision) or bf16 (faster, with a warning)")
    i.add_argument("--batch-size", type=int, default=32)
    i.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="DataLoader processes decoding JPEGs")
    i.add_argument("--checkpoint-every", type=int, default=20, help="write the partial sums every N batches")
    i.add_argument("--subset", type=int, default=None, help="only N images spread evenly over the folder (a quick check)")
    i.add_argument("--device", choices=["cpu", "cuda"], default=None)
    i.add_argument("--no-progress", action="store_true")
    r = sub.add_parser("reproduce", help="run notebooks 01-05 headless with papermill (the whole course)")
    r.add_argument("--run-dir", default=None, help="run directory (default runs/<profile>)")
    r.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    r.add_argument("--data-dir", default=None, help="dataset folder (default: $BAGNET_DATA, then ./data/flowers)")
    r.add_argument("--manifest", default=None, help="use this path,split CSV instead of a new split")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--bagnet", default="bagnet33", choices=["bagnet9", "bagnet17", "bagnet33"],
                   help="the BagNet notebook 03 trains and notebooks 04-05 study (the notebooks' BAGNET)")
    r.add_argument("--nproc", type=int, default=None,
                   help="train in notebooks 02 and 03 with torchrun on this many processes (one per GPU; "
                        "docs/distributed.md); default: in the notebook's own process")
    r.add_argument("--resume", action="store_true",
                   help="skip notebooks that already ran without error with the same parameters in this run directory")
    r.add_argument("--publish", action="store_true",
                   help="copy the finished run into figures/<profile>/ and results/<profile>/ (never for smoke or "
                        "synthetic-data runs)")
    f = sub.add_parser("reference", help="a ready run directory from the networks shipped in results/<profile>/networks: "
                                         "notebooks 02 and 03 skip training, 04 and 05 run on them (seconds)")
    f.add_argument("--run-dir", default="runs/reference", help="where to lay it out (default runs/reference)")
    f.add_argument("--profile", choices=sorted(PROFILES), default="cpu", help="whose published networks")
    f.add_argument("--data-dir", default=None, help="the flowers the networks were trained on (default: $BAGNET_DATA, "
                                                    "then ./data/flowers)")
    f.add_argument("--for-lab", action="store_true",
                   help="print the run directory `make lab` should open: runs/<profile> when it holds a finished course, "
                        "else the reference run (laid out), else runs/<profile>; never fails")
    f.add_argument("--results-dir", default=None, help="the published results holding networks/ (default results/<profile>)")
    f.add_argument("--no-progress", action="store_true")
    v = sub.add_parser("verify", help="recompute every published number that needs no training from the shipped "
                                      "networks and compare (exit 1 on any mismatch)")
    v.add_argument("--profile", choices=sorted(PROFILES), default="cpu", help="whose published numbers")
    v.add_argument("--run-dir", default="runs/verify", help="where the recomputation runs (default runs/verify)")
    v.add_argument("--data-dir", default=None, help="the flowers (default: $BAGNET_DATA, then ./data/flowers)")
    v.add_argument("--skip-without-networks", action="store_true",
                   help="exit 0, saying why, when the profile ships no networks or the flowers are missing (CI)")
    v.add_argument("--results-dir", default=None, help="the published results to check (default results/<profile>)")
    v.add_argument("--no-progress", action="store_true")
    e = sub.add_parser("seeds", help="the seed study: the course again with more training seeds beside a finished "
                                     "run, its results/seeds.csv, and its write-up (notebook 05) redone with the table")
    e.add_argument("--run-dir", default=None, help="the finished run (default runs/<profile>); seed N goes to "
                                                   "<run-dir>-seedN")
    e.add_argument("--profile", choices=sorted(PROFILES), default="cpu", help="only names the default run directory")
    e.add_argument("--seeds", nargs="+", type=int, default=[1, 2],
                   help="training seeds to add to the run's own (default 1 2: three seeds in all)")
    e.add_argument("--publish", action="store_true", help="publish the run again afterwards (as reproduce --publish)")
    e.add_argument("--gather", action="store_true",
                   help="run no course: take every finished <run-dir>-seedN beside the run (copied from other machines) "
                        "into results/seeds.csv and the write-up")
    e.add_argument("--data-dir", default=None, help="the dataset on this machine, where it is not at the run's own path")
    e.add_argument("--nproc", type=int, default=None, help="train each seed with torchrun on this many processes")
    h = sub.add_parser("changes", help="what a republished run changed: every verdict, the accuracies and the drop "
                                       "curve before and after, into <after>/changes.md")
    h.add_argument("--before", required=True,
                   help="the previous round's results: REV:results/<profile> read from git, or a folder")
    h.add_argument("--after", default="results/cpu", help="the republished results folder (default results/cpu)")
    h.add_argument("--out", default=None, help="where to write (default <after>/changes.md)")
    return parser


def _run(args: argparse.Namespace) -> int:
    progress = not getattr(args, "no_progress", False)
    if args.command == "data":
        return _data(args)
    if args.command == "bench":
        import importlib

        from bagnet_lib.io import write_json

        bench = importlib.import_module(f"bagnet_lib.bench.{args.name}")
        if args.from_json:
            result = json.loads(Path(args.from_json).read_text())
        elif args.device:
            if args.name != "imagenet":
                raise UserError(f"--device is for `bench imagenet` (`bench {args.name}` picks its own devices).")
            result = bench.run(quick=args.quick, device=args.device)
        else:
            result = bench.run(quick=args.quick)
        print(bench.format_table(result))
        if args.json:
            write_json(args.json, result)
            print(f"written to {args.json}")
            if args.name == "sparse":  # its figure beside the JSON (docs/performance.md shows results/bench/sparse.png)
                bench.plot_sparse(result, Path(args.json).with_suffix(".png"))
                print(f"figure written to {Path(args.json).with_suffix('.png')}")
        if args.readme:  # the block's Markdown where the benchmark has its own (`markdown`), else its table
            _rewrite_block(Path(args.readme), f"bench-{args.name}", getattr(bench, "markdown", bench.format_table)(result))
        return 0
    if args.command == "tune":
        from bagnet_lib.course.tuning import TUNING_DIR, tune, tuning_table
        from bagnet_lib.nets.profiles import parse_overrides

        for rec in tune(args.name, parse_overrides(args.overrides), tuple(args.models), args.profile, args.run_dir,
                        args.data_dir, args.manifest, args.seed, progress=progress):
            print(f"{rec['run']} / {rec['model']}: best val {rec['best_val_acc']:.3f} (epoch {rec['best_epoch']}), "
                  f"test {rec['test_acc']:.3f}, median {rec['median_epoch_seconds']:.1f} s per epoch")
        if args.readme:
            book = json.loads((TUNING_DIR / f"{args.profile}.json").read_text())
            _rewrite_block(Path(args.readme), "tuning", tuning_table(book))
        return 0
    if args.command == "imagenet":
        return _imagenet(args, progress)
    if args.command == "changes":
        return _changes(args)
    from bagnet_lib.blackout import study
    from bagnet_lib.course import pipeline
    from bagnet_lib.nets.models import MODEL_NAMES

    if getattr(args, "model", None) is not None and args.model not in MODEL_NAMES:
        raise UserError(f"Unknown model {args.model!r}. Available: {', '.join(MODEL_NAMES)}.")
    if args.command == "reproduce":
        from bagnet_lib.course.runner import REPO, reproduce

        reproduce(args.profile, args.run_dir, args.data_dir, args.manifest, args.seed,
                  publish_to=REPO if args.publish else None, resume=args.resume, bagnet=args.bagnet,
                  nproc=args.nproc)
        return 0
    if args.command == "reference":
        return _reference(args, progress)
    if args.command == "verify":
        return _verify(args, progress)
    if args.command == "seeds":
        from bagnet_lib.course.runner import REPO, seed_study

        table = seed_study(args.run_dir or f"runs/{args.profile}", args.seeds, publish_to=REPO if args.publish else None,
                           gather=args.gather, data_dir=args.data_dir, nproc=args.nproc)
        print(table[["seed", "resnet50_test_acc", "bagnet_test_acc", "gap", "patch_random25_change"]].to_string(index=False))
        return 0
    from bagnet_lib.nets.distributed import close_distributed, init_distributed, main_first
    from bagnet_lib.nets.train import DEVICE_ENV

    if args.device:
        os.environ[DEVICE_ENV] = args.device  # `train.select_device` reads it, in this process and its children
    w = init_distributed(args.device)
    try:
        profile = args.profile
        if getattr(args, "overrides", None):
            from bagnet_lib.nets.profiles import get_profile, parse_overrides

            profile = get_profile(args.profile, **parse_overrides(args.overrides))
        run = main_first(lambda: pipeline.prepare_run(args.run_dir, profile, args.data_dir, args.manifest, args.seed,
                                                      progress=progress and w.main))
        say = print if w.main else (lambda *a, **k: None)
        if args.command == "train":
            m = pipeline.train_step(run, args.model, progress)
            say(f"{args.model}: best epoch {m['best_epoch']}, test acc {m['test']['acc']:.3f} "
                f"[{m['test']['acc_ci'][0]:.3f}, {m['test']['acc_ci'][1]:.3f}], test loss {m['test']['loss']:.3f} "
                f"(trained on {m['world_size']} process{'es' * (m['world_size'] != 1)}, backend {m['backend']})")
        elif args.command == "cache-logits":
            cache = study.cache_step(run, args.model, args.split, progress)
            say(f"cached patch logits {tuple(cache.patch_logits.shape)} for {args.split} in {run.run_dir / 'cache'}")
        elif args.command == "sweep":
            from bagnet_lib.blackout.sweep import summarize_sweep, sweep

            cache = study.cache_step(run, args.model, "test", progress)
            df = sweep(cache, args.kinds, args.drop_fracs, range(args.seeds), args.aggregations)
            out = Path(args.out) if args.out else run.results / "sweep.csv"
            if w.main:
                df.to_csv(out, index=False)
            say(summarize_sweep(df).drop(columns=["acc_std"]).to_string(index=False))
            say(f"{len(df)} configurations written to {out}")
        elif args.command == "blackout":
            for name in args.experiments or list(study.BLACKOUT_EXPERIMENTS):
                df = study.blackout_experiment(run, name, args.model, progress and w.main)
                say(f"{name}: {len(df)} rows in {run.results / f'blackout_{name}.csv'}")
    finally:
        close_distributed()
    return 0


def _reference(args: argparse.Namespace, progress: bool) -> int:
    from bagnet_lib.course.reference import lay_out_reference
    from bagnet_lib.course.runner import REPO

    results = Path(args.results_dir) if args.results_dir else REPO / "results" / args.profile
    if args.for_lab:  # the run a student opens: their own finished course, else the shipped networks, else train
        own = REPO / "runs" / args.profile
        if (own / "results" / "summary.json").is_file():
            print(own)
            return 0
        try:
            print(lay_out_reference(args.run_dir, results, args.data_dir, progress=False).run_dir.resolve())
        except UserError as exc:
            print(f"[lab] no ready run: {exc}", file=sys.stderr)
            print(own)
        return 0
    t0 = time.perf_counter()
    run = lay_out_reference(args.run_dir, results, args.data_dir, progress)
    print(f"{run.run_dir}: the networks shipped in {results / 'networks'} ({', '.join(run.trained())}), their data and "
          f"split, laid out in {time.perf_counter() - t0:.0f} s. Open the notebooks with RUN_DIR = "
          f"\"{os.path.relpath(run.run_dir.resolve(), REPO / 'notebooks')}\": 02 and 03 skip training, 04 and 05 run on "
          "them (`make lab` opens this run by default).")
    return 0


def _changes(args: argparse.Namespace) -> int:
    import tempfile

    from bagnet_lib.writeup.changes import from_git, write_changes

    with tempfile.TemporaryDirectory() as tmp:
        before, label = Path(args.before), args.before
        if not before.is_dir() and ":" in args.before:
            before, label = from_git(args.before, tmp), f"git {args.before}"
        out = write_changes(before, args.after, label, args.after, args.out)
    print(f"written to {out}")
    return 0


def _verify(args: argparse.Namespace, progress: bool) -> int:
    from bagnet_lib.course.runner import REPO
    from bagnet_lib.course.verify import format_checks, verify
    from bagnet_lib.data.folder import find_data_dir
    from bagnet_lib.nets.shipped import MANIFEST, networks_dir

    results = Path(args.results_dir) if args.results_dir else REPO / "results" / args.profile
    if args.skip_without_networks:
        why = (f"{networks_dir(results) / MANIFEST} does not exist: the `{args.profile}` profile ships no networks yet"
               if not (networks_dir(results) / MANIFEST).is_file() else
               "no flowers dataset here" if find_data_dir(args.data_dir) is None else None)
        if why:
            print(f"verify: skipped, {why}.")
            return 0
    t0 = time.perf_counter()
    checks = verify(results, args.run_dir, args.data_dir, progress)
    print(format_checks(checks))
    print(f"verify: {time.perf_counter() - t0:.0f} s")
    return 0 if all(c.match for c in checks) else 1


def _imagenet(args: argparse.Namespace, progress: bool) -> int:
    from bagnet_lib.blackout.imagenet import drop_fractions
    from bagnet_lib.course.imagenet import imagenet_study
    from bagnet_lib.nets.distributed import close_distributed, init_distributed

    if not args.val_dir:
        raise UserError("No ImageNet validation folder: pass --val-dir DIR (the folder of the 1,000 synset folders) "
                        "or set IMAGENET_VAL. docs/imagenet.md says how to prepare one.")
    settings = StreamSettings(tuple(args.masks), drop_fractions(args.drop_fracs), args.seeds, tuple(args.aggregations),
                              tuple(args.channels), drop_fractions(args.pixel))
    w = init_distributed(args.device)
    try:
        s = imagenet_study(args.val_dir, args.model, args.weights, args.out, settings, args.batch_size, args.workers,
                           args.precision, args.checkpoint_every, args.subset, args.device, progress and w.main)
    finally:
        close_distributed()
    if w.main:
        full = s["full"]
        print(f"{s['model_label']} on {s['n_images']} images ({s['n_unreadable']} unreadable, skipped), {s['precision']}, "
              f"{s['world_size']} process{'es' * (s['world_size'] != 1)}: top-1 {full['top1']['value']:.2f} % "
              f"[{full['top1']['ci95'][0]:.2f}, {full['top1']['ci95'][1]:.2f}], top-5 {full['top5']['value']:.2f} %")
        for a in s["anchors"]:
            mine = "not comparable" if a["this_run"] is None else f"this run {a['this_run']:.2f} ({a['difference']:+.2f})"
            print(f"  {a['source']}: {a['metric']} {a['value']:.2f} % ({a['precision']}); {mine}")
        if not s["anchors_apply"]:
            print("  (the anchors apply to the published weights in fp32 on all 50,000 images without unreadable files; "
                  "this run is not that)")
        print(f"written to {Path(args.out) / args.model}/ (blackout.csv, summary.json, drop_curve.png)")
    return 0


def _data(args: argparse.Namespace) -> int:
    from bagnet_lib.data.folder import resolve_data_dir

    if args.data_command == "download":
        from bagnet_lib.data.download import CS229_URL, FLOWER_PHOTOS_URL, download_cs229, download_flowers
        from bagnet_lib.data.folder import DEFAULT_DATA_DIR

        if args.source == "cs229":
            dest, manifest = download_cs229(args.dest or DEFAULT_DATA_DIR.parent / "flowers_cs229",
                                            url=args.url or CS229_URL, timeout=args.timeout)
            print(f"the paper's flowers are in {dest} and its split in {manifest}; use them with "
                  f"`make reproduce DATA={dest} MANIFEST={manifest}` (or --data-dir and --manifest)")
            return 0
        dest = download_flowers(args.dest or DEFAULT_DATA_DIR, url=args.url or FLOWER_PHOTOS_URL, timeout=args.timeout)
        print(f"flowers ready in {dest}; use it with BAGNET_DATA={dest} or --data-dir {dest}")
    elif args.data_command == "audit":
        from bagnet_lib.data.audit import audit_dataset

        report = audit_dataset(resolve_data_dir(args.data_dir), progress=not args.json or sys.stderr.isatty())
        if args.json:
            print(json.dumps(report.to_json(), indent=2))
        else:
            print(report.format_text())
    elif args.data_command == "split":
        from bagnet_lib.data.split import make_split, read_manifest, write_split

        root = resolve_data_dir(args.data_dir)
        df = read_manifest(root, args.manifest) if args.manifest else make_split(
            root, seed=args.seed, keep_conflicts=args.keep_conflicts)
        write_split(df, args.out)
        counts = df.groupby(["label", "split"]).size().unstack(fill_value=0)
        print(counts.to_string())
        print(f"split of {len(df)} images written to {args.out}")
    elif args.data_command == "synthetic":
        from bagnet_lib.data.synthetic import generate_synthetic_dataset

        out = generate_synthetic_dataset(args.out, args.n_per_class, args.image_size, args.seed)
        print(f"synthetic dataset in {out}")
    return 0


def _rewrite_block(readme: Path, name: str, content: str) -> None:
    """Rewrite the block `name` (in the README or a docs/ page beside it), or say clearly which marker lines are missing."""
    from bagnet_lib.writeup.readme import update_block

    if not update_block(readme, name, content):
        raise UserError(f"Neither {readme} nor a page of {readme.parent / 'docs'} has a '<!-- {name}:start -->' … "
                        f"'<!-- {name}:end -->' block; add the two marker lines where the table belongs.")
    print(f"rewrote the {name} block ({readme} or docs/ beside it)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except UserError as exc:
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank raises it; rank 0 says it
            print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
