"""Dataset converters and the `mmgrounding convert` sub-command.

Each converter is a plain function that returns its summary dict:
`convert_coco`, `convert_visual_genome`, `convert_flickr30k`,
`convert_referit` and `convert_mg_legacy`. `add_convert_parser` adds the
command line: `mmgrounding convert SOURCE ...`, one sub-command per source.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from mmgrounding.data.converters.common import CHECK_MODES

logger = logging.getLogger(__name__)

__all__ = [
    "add_convert_parser",
    "convert_coco",
    "convert_flickr30k",
    "convert_mg_legacy",
    "convert_referit",
    "convert_visual_genome",
    "run_convert",
]


def __getattr__(name: str) -> Any:
    # Converters load on first use, so `mmgrounding --help` stays fast.
    if name == "convert_coco":
        from mmgrounding.data.converters.coco import convert_coco

        return convert_coco
    if name == "convert_visual_genome":
        from mmgrounding.data.converters.visual_genome import convert_visual_genome

        return convert_visual_genome
    if name == "convert_flickr30k":
        from mmgrounding.data.converters.flickr30k import convert_flickr30k

        return convert_flickr30k
    if name == "convert_referit":
        from mmgrounding.data.converters.referit import convert_referit

        return convert_referit
    if name == "convert_mg_legacy":
        from mmgrounding.data.converters.mg_legacy import convert_mg_legacy

        return convert_mg_legacy
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_COMMON_HELP = (
    "Writes OUT/<split>.jsonl (the manifest) and OUT/<split>.summary.json (what was kept, "
    "skipped and repaired, by reason). Running it again gives the same files."
)


def _add_output_arguments(parser: argparse.ArgumentParser, images: bool = True) -> None:
    parser.add_argument("--split", required=True, help="split name; the manifest is OUT/<split>.jsonl")
    parser.add_argument("--out", required=True, help="output folder of the converted dataset")
    parser.add_argument(
        "--check-images",
        choices=CHECK_MODES,
        default="decode",
        help="how each image is checked: decode it fully (default, finds truncated files), "
        "read its header only (faster), or only check that the file exists",
    )
    if images:
        parser.add_argument(
            "--copy-images",
            action="store_true",
            help="copy the kept images into OUT/images instead of linking OUT/images to --images",
        )


def _source_parser(subparsers: Any, name: str, summary: str, expects: str) -> argparse.ArgumentParser:
    return subparsers.add_parser(
        name,
        help=summary,
        description=f"{summary}\n\nExpected files:\n{expects}\n\n{_COMMON_HELP}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_convert_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `convert` sub-command, with one sub-command per source, to `subparsers`.

    Every source parser sets `handler` to `run_convert`, which takes the
    parsed arguments and returns the process exit status.
    """
    convert = subparsers.add_parser(
        "convert",
        help="convert a public dataset release to a manifest",
        description="Convert a public dataset release to the manifest format (OUT/<split>.jsonl).",
    )
    sources = convert.add_subparsers(dest="source", required=True, metavar="SOURCE")

    coco = _source_parser(
        sources, "coco", "COCO captions (no boxes: training only).",
        "  --annotations  captions_train2014.json ('images' with id, file_name, width, height;\n"
        "                 'annotations' with image_id, caption)\n"
        "  --images       folder with the files named by file_name",
    )
    coco.add_argument("--annotations", required=True, help="COCO captions JSON file")
    coco.add_argument("--images", required=True, help="COCO image folder")
    _add_output_arguments(coco)

    visual_genome = _source_parser(
        sources, "visual-genome", "Visual Genome region descriptions.",
        "  --regions     region_descriptions.json\n"
        "  --image-data  image_data.json (image sizes)\n"
        "  --images      folder with <id>.jpg, directly or under VG_100K/ and VG_100K_2/\n"
        "  --splits      the MG paper's data_splits.pickle ({split: set of ids}),\n"
        "                or a JSON list / text file of image ids",
    )
    visual_genome.add_argument("--regions", required=True, help="region_descriptions.json")
    visual_genome.add_argument("--image-data", required=True, help="image_data.json")
    visual_genome.add_argument("--images", required=True, help="Visual Genome image folder")
    visual_genome.add_argument("--splits", required=True, help="split file: pickled dict of id sets or list of ids")
    _add_output_arguments(visual_genome)

    flickr30k = _source_parser(
        sources, "flickr30k", "Flickr30k Entities phrases.",
        "  --root    folder with Sentences/<id>.txt, Annotations/<id>.xml and <split>.txt\n"
        "  --images  folder with <id>.jpg",
    )
    flickr30k.add_argument("--root", required=True, help="Flickr30k Entities folder")
    flickr30k.add_argument("--images", required=True, help="Flickr30k image folder")
    _add_output_arguments(flickr30k)

    referit = _source_parser(
        sources, "referit", "ReferIt (RefClef, UNC split) referring expressions.",
        "  --refs        refs(unc).p (pickled list of refs) or the same list as JSON\n"
        "  --instances   instances.json (images, annotations with bbox [x, y, w, h], categories)\n"
        "  --images      saiapr_tc-12 image folder\n"
        "  --image-list  optional: referit_<split>_imlist.txt, image ids that define the split\n"
        "  --captions    optional: folder of IAPR TC-12 .eng description files",
    )
    referit.add_argument("--refs", required=True, help="refs(unc).p or refs JSON file")
    referit.add_argument("--instances", required=True, help="instances.json")
    referit.add_argument("--images", required=True, help="ReferIt image folder")
    referit.add_argument("--image-list", help="image id list that defines the split (optional)")
    referit.add_argument("--captions", help="folder of .eng description files (optional)")
    _add_output_arguments(referit)

    mg_legacy = _source_parser(
        sources, "mg-legacy", "Pre-processed data of the MG paper's release (LMDB + pickle).",
        "  --lmdb         LMDB image store folder (holds data.mdb)\n"
        "  --annotations  the pickled annotation dict of the split (<split>.pickle)\n"
        "Images are extracted into OUT/images/.",
    )
    mg_legacy.add_argument("--lmdb", required=True, help="LMDB image store folder")
    mg_legacy.add_argument("--annotations", required=True, help="annotation pickle of the split")
    mg_legacy.add_argument(
        "--dataset",
        choices=("flickr30k", "visual_genome", "referit", "coco"),
        help="dataset the pickle comes from (default: detected from its fields)",
    )
    _add_output_arguments(mg_legacy, images=False)

    for parser in (coco, visual_genome, flickr30k, referit, mg_legacy):
        parser.set_defaults(handler=run_convert)
    return convert


def _run_source(args: argparse.Namespace) -> dict[str, Any]:
    from mmgrounding.data import converters

    images = {"check_images": args.check_images}
    if args.source != "mg-legacy":
        images["copy_images"] = args.copy_images
    if args.source == "coco":
        return converters.convert_coco(args.annotations, args.images, args.split, args.out, **images)
    if args.source == "visual-genome":
        return converters.convert_visual_genome(
            args.regions, args.image_data, args.images, args.splits, args.split, args.out, **images
        )
    if args.source == "flickr30k":
        return converters.convert_flickr30k(args.root, args.images, args.split, args.out, **images)
    if args.source == "referit":
        return converters.convert_referit(
            args.refs, args.instances, args.images, args.split, args.out,
            image_list=args.image_list, captions=args.captions, **images,
        )
    if args.source == "mg-legacy":
        return converters.convert_mg_legacy(
            args.lmdb, args.annotations, args.split, args.out, dataset=args.dataset, **images
        )
    raise ValueError(f"unknown convert source {args.source!r}")


def run_convert(args: argparse.Namespace) -> int:
    """Run the converter chosen on the command line; return 0, or 2 on bad input.

    Errors in the input (missing files, invalid formats) are logged as one
    line without a traceback.
    """
    try:
        summary = _run_source(args)
    except (FileNotFoundError, ValueError, ImportError) as error:
        logger.error("convert %s failed: %s", args.source, error)
        return 2
    logger.info("convert %s: %s", args.source, summary["kept"])
    return 0
