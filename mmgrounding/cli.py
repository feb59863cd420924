"""The `mmgrounding` command: ground, train, evaluate, convert, pack, synthetic."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

logger = logging.getLogger("mmgrounding")


def _ground(args) -> int:
    from mmgrounding.data.images import load_image
    from mmgrounding.inference import check_phrases, ground_phrases
    from mmgrounding.model.build import load_checkpoint
    from mmgrounding.visualize import save_heatmap

    # Check the cheap inputs before the model loads.
    check_phrases(args.phrases)
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out {args.out!r} must be a .png file name")
    image = load_image(args.image)
    model, config = load_checkpoint(args.checkpoint, args.modules)
    results = ground_phrases(model, image, args.phrases, config.visual.image_size)
    summary = []
    for index, result in enumerate(results):
        path = out if len(results) == 1 else out.with_name(f"{out.stem}-{index}{out.suffix}")
        save_heatmap(path, image, result["heatmap"], title=result["phrase"])
        summary.append({"phrase": result["phrase"], "point": list(result["point"]), "picture": str(path)})
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 0


def _config_from_args(args):
    from mmgrounding.config import get_preset, load_config

    config = load_config(args.config) if args.config else get_preset(args.preset)
    overrides = {"train": {}, "visual": {}, "text": {}}
    for name, section, field in (
        ("epochs", "train", "epochs"),
        ("batch_size", "train", "batch_size"),
        ("learning_rate", "train", "learning_rate"),
        ("text_source", "train", "text_source"),
        ("seed", "train", "seed"),
        ("image_size", "visual", "image_size"),
        ("backbone", "visual", "backbone"),
        ("text_encoder", "text", "encoder"),
    ):
        value = getattr(args, name, None)
        if value is not None:
            overrides[section][field] = value
    return config.replace(**{k: v for k, v in overrides.items() if v})


def _train(args) -> int:
    from mmgrounding.data.pipeline import find_manifest
    from mmgrounding.training import train

    config = _config_from_args(args)
    manifest = find_manifest(args.data, args.split)
    validation = find_manifest(args.val_data or args.data, args.val_split) if args.val_split else None
    results = train(
        config,
        manifest,
        args.output,
        modules_dir=args.modules,
        validation_manifest=validation,
        validation_limit=args.val_limit,
        resume=args.resume,
        verbose=1 if sys.stdout.isatty() else 2,
    )
    print(json.dumps({k: results[k] for k in ("epochs_run", "checkpoint", "wall_time_s")}, indent=2, ensure_ascii=False))
    return 0


def _evaluate(args) -> int:
    from mmgrounding.data.pipeline import find_manifest
    from mmgrounding.evaluation.runner import EvaluationOptions, evaluate, write_results
    from mmgrounding.model.build import load_checkpoint

    options = EvaluationOptions(
        tolerance_px=args.tolerance_px,
        union_box=args.union_box,
        min_box_area=args.min_box_area,
        protocol=args.protocol,
        query_mode=args.query_mode,
    )
    manifest = find_manifest(args.data, args.split)
    model, config = load_checkpoint(args.checkpoint, args.modules)
    results = evaluate(model, manifest, config.visual.image_size, options, limit=args.limit)
    write_results(results, args.out, {"checkpoint": str(args.checkpoint), "config": config.to_dict()})
    print(json.dumps({"pointing_accuracy": results["pointing_accuracy"], "counts": results["counts"]}, indent=2))
    return 0


def _synthetic(args) -> int:
    from mmgrounding.data.synthetic import write_synthetic_dataset

    paths = write_synthetic_dataset(args.out, {"train": args.train, "test": args.test}, args.size, args.seed)
    print(json.dumps({split: str(path) for split, path in paths.items()}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmgrounding", description=__doc__)
    parser.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging level (default INFO)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    ground = commands.add_parser("ground", help="draw the heatmap of phrases on an image")
    ground.add_argument("image", help="image file (JPEG, PNG, BMP or GIF)")
    ground.add_argument("phrases", nargs="+", help="one or more phrases to ground")
    ground.add_argument("--checkpoint", required=True, help="checkpoint folder written by training")
    ground.add_argument("--modules", default=None, help="pretrained modules folder (not needed for mini)")
    ground.add_argument("--out", default="heatmap.png", help="output picture; several phrases get -0, -1 ... suffixes")
    ground.set_defaults(handler=_ground)

    train = commands.add_parser("train", help="train a model on a converted dataset")
    train.add_argument("--preset", default="mini", help="mini, vgg_bilstm, vgg_elmo or pnasnet_elmo")
    train.add_argument("--config", default=None, help="config JSON file; replaces --preset")
    train.add_argument("--data", required=True, help="converted dataset folder")
    train.add_argument("--split", default="train", help="manifest <split>.jsonl to train on")
    train.add_argument("--val-split", default=None, help="split with boxes for model selection")
    train.add_argument("--val-data", default=None, help="dataset folder of --val-split (default --data)")
    train.add_argument("--val-limit", type=int, default=None, help="validate on the first N images only")
    train.add_argument("--output", required=True, help="folder for checkpoints, logs and results")
    train.add_argument("--modules", default="modules", help="pretrained modules folder")
    train.add_argument("--epochs", type=int, help="number of epochs (default: the preset's)")
    train.add_argument("--batch-size", type=int, help="images per batch, at least 2 (default: the preset's)")
    train.add_argument("--learning-rate", type=float, help="Adam learning rate (default: the preset's)")
    train.add_argument("--image-size", type=int, help="square input size in pixels")
    train.add_argument("--text-source", choices=["captions", "queries"])
    train.add_argument("--backbone", help="override the preset's backbone")
    train.add_argument("--text-encoder", help="override the preset's text encoder")
    train.add_argument("--seed", type=int, help="seed of the sampler and the initial weights")
    train.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoints/last")
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("evaluate", help="pointing game on a split with boxes")
    evaluate.add_argument("--checkpoint", required=True, help="checkpoint folder written by training")
    evaluate.add_argument("--data", required=True, help="converted dataset folder")
    evaluate.add_argument("--split", default="test", help="manifest <split>.jsonl to score (default test)")
    evaluate.add_argument("--out", default="results.json", help="results JSON file")
    evaluate.add_argument("--modules", default="modules", help="pretrained modules folder (not needed for mini)")
    evaluate.add_argument("--tolerance-px", type=float, default=0.0, help="hit distance from a box in pixels")
    evaluate.add_argument("--union-box", action="store_true", help="test against the union of the boxes")
    evaluate.add_argument("--min-box-area", type=float, default=0.05, help="skip queries whose union box covers less of the image")
    evaluate.add_argument(
        "--protocol",
        default="paper",
        choices=["paper", "union_first_box"],
        help="paper: each box counts and the area rule uses the union box; union_first_box: later work's counting",
    )
    evaluate.add_argument(
        "--query-mode",
        default="auto",
        choices=["auto", "phrase"],
        help="auto: Flickr30k phrases are read inside their sentence; phrase: feed every phrase alone",
    )
    evaluate.add_argument("--limit", type=int, default=None, help="evaluate the first N images only")
    evaluate.set_defaults(handler=_evaluate)

    synthetic = commands.add_parser("synthetic", help="write the synthetic shapes dataset")
    synthetic.add_argument("--out", required=True, help="folder for images/ and the manifests")
    synthetic.add_argument("--train", type=int, default=400, help="training images")
    synthetic.add_argument("--test", type=int, default=100, help="test images")
    synthetic.add_argument("--size", type=int, default=192, help="image side in pixels")
    synthetic.add_argument("--seed", type=int, default=0, help="seed of the generator (default 0)")
    synthetic.set_defaults(handler=_synthetic)

    from mmgrounding.data.converters import add_convert_parser

    add_convert_parser(commands)

    pack = commands.add_parser("pack", help="pack a manifest and its images into TFRecord shards")
    pack.add_argument("manifest", help="<split>.jsonl manifest")
    pack.add_argument("--out", required=True, help="folder for the shards")
    pack.add_argument("--images-per-shard", type=int, default=1000, help="images per shard file (default 1000)")
    pack.set_defaults(handler=_pack)
    return parser


def _pack(args) -> int:
    from mmgrounding.data.tfrecords import write_shards

    summary = write_shards(args.manifest, args.out, args.images_per_shard)
    # The full list of skipped images stays in the shard index.
    summary.pop("skipped_images", None)
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.handler(args) or 0)
    except (ValueError, OSError) as error:
        logger.error("%s", error)
        return 2


if __name__ == "__main__":
    sys.exit(main())
