"""``pgd``: command line of the library (presets, synthetic data, running a spec)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from pydantic import ValidationError

from pgd_core.presets import get_preset, list_presets
from pgd_core.spec import RunSpec


def _load_spec(args: argparse.Namespace) -> RunSpec:
    if args.preset:
        return get_preset(args.preset)
    path = Path(args.spec)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SystemExit(f"error: spec file {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise SystemExit(f"error: {path} is not valid JSON: {exc}") from None
    try:
        return RunSpec.model_validate(data)
    except ValidationError as exc:
        lines = [f"  {'.'.join(map(str, e['loc'])) or '(spec)'}: {e['msg']}" for e in exc.errors()]
        raise SystemExit(f"error: invalid spec in {path}:\n" + "\n".join(lines)) from None


def _cmd_presets(args: argparse.Namespace) -> int:
    if args.name:
        print(json.dumps(get_preset(args.name).model_dump(mode="json"), indent=2))
    else:
        print("\n".join(list_presets()))
    return 0


def _cmd_make_shapes(args: argparse.Namespace) -> int:
    from pgd_core.data.synthetic_shapes import make_coco_shapes

    info = make_coco_shapes(
        args.data_root,
        args.name,
        num_train=args.num_train,
        num_val=args.num_val,
        image_size=(args.size, args.size),
        num_classes=args.num_classes,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    print(info.root)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    spec = _load_spec(args)
    if args.processes is not None:
        try:
            spec = RunSpec.model_validate(
                {**spec.model_dump(mode="json"), "processes": args.processes}
            )
        except ValidationError as exc:
            raise SystemExit(f"error: --processes: {exc.errors()[0]['msg']}") from None
    from pgd_core.runner import RunCallbacks, run_spec

    def progress(it: int, total: int) -> None:
        print(f"\r[{spec.kind} {spec.detector}] iteration {it}/{total}", end="", file=sys.stderr)

    # stdout carries the result's JSON alone (``pgd run ... | jq``): mmengine's
    # logger and pycocotools print to stdout, so the run's chatter goes to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        result = run_spec(
            spec,
            args.work_dir,
            data_root=args.data_root,
            weights_root=args.weights_root,
            teacher_checkpoint=args.teacher_checkpoint,
            checkpoint=args.checkpoint,
            callbacks=RunCallbacks(on_progress=progress),
        )
    print(file=sys.stderr)
    print(
        json.dumps(
            dict(
                status=result.status,
                iteration=result.iteration,
                metrics=result.metrics,
                checkpoint=str(result.checkpoint) if result.checkpoint else None,
            ),
            indent=2,
        )
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pgd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("presets", help="list presets, or print one as JSON")
    p.add_argument("name", nargs="?")
    p.set_defaults(func=_cmd_presets)

    p = sub.add_parser("make-shapes", help="write a synthetic COCO-format dataset")
    p.add_argument("--data-root", required=True)
    p.add_argument("--name", default="shapes")
    p.add_argument("--num-train", type=int, default=64)
    p.add_argument("--num-val", type=int, default=16)
    p.add_argument("--num-classes", type=int, default=3)
    p.add_argument("--size", type=int, default=160)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_make_shapes)

    p = sub.add_parser("run", help="train, distil or evaluate a spec in a work directory")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset")
    src.add_argument("--spec", help="a JSON file holding a RunSpec")
    p.add_argument("--work-dir", required=True)
    p.add_argument("--data-root", required=True)
    p.add_argument("--weights-root")
    p.add_argument("--teacher-checkpoint")
    p.add_argument("--checkpoint")
    p.add_argument(
        "--processes",
        type=int,
        help="data-parallel processes (GPUs, or gloo processes for a cpu spec), "
        "launched with torchrun; the spec's batch size is split over them",
    )
    p.set_defaults(func=_cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (KeyError, ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
