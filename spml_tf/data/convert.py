"""Converts a dataset to TFRecord shards (the library of `python -m spml_tf.convert`, spml_tf/convert.py).

raw release (or Cole et al.'s formatted files, or a user's CSVs)
  -> full label matrix in the original code's image order
  -> single-positive observed labels of the official train set (seed 1200, docs/method.md section 4)
  -> 80/20 train/val split of the official train set (seed 1200)
  -> every image checked -> train, val and test shards with manifests (shard_writer).
"""

import dataclasses

from spml_tf.core.errors import UsageError
from spml_tf.data import image_limits

DATASETS = ("voc", "coco", "nuswide", "cub", "formatted", "csv")
DOWNLOADABLE = ("voc", "coco")
CUB_URL = "https://data.caltech.edu/records/65de6-vp158"  # CUB_200_2011.tgz: needs a browser (terms of use)


@dataclasses.dataclass(frozen=True)
class ConvertConfig:
    """Everything a conversion depends on; see the flags below for each field."""

    dataset: str
    out_dir: str = ""  # "" = the dataset's default data directory, where train_main.py looks
    raw_dir: str = ""
    download: bool = False
    mirror: str = ""
    formatted_dir: str = ""
    image_root: str = ""
    name: str = ""
    train_csv: str = ""
    val_csv: str = ""
    test_csv: str = ""
    classes: str = ""
    observed_negatives: int = 0
    skip_bad_images: bool = False
    shard_size_mb: float = 150.0
    workers: int = 1
    resize_to: int = 0  # 0: keep the source bytes
    max_image_pixels: int = image_limits.DEFAULT_MAX_PIXELS

    def __post_init__(self):
        def require(condition, message):
            if not condition:
                raise UsageError(message)

        require(self.dataset in DATASETS, f"--dataset={self.dataset!r} is not one of {', '.join(DATASETS)}")
        require(not self.download or self.dataset in DOWNLOADABLE,
                f"--download fetches {' and '.join(DOWNLOADABLE)} only"
                + (f"; download CUB_200_2011.tgz from {CUB_URL}" if self.dataset == "cub" else ""))
        require(not self.mirror or self.download, "--mirror applies with --download")
        if self.dataset in ("voc", "coco", "nuswide", "cub"):
            require(self.raw_dir, f"--raw_dir is required: where the {self.dataset} release is"
                    + (" (or goes, with --download)" if self.dataset in DOWNLOADABLE else ""))
        if self.dataset == "formatted":
            require(self.formatted_dir and self.image_root and self.name,
                    "--dataset=formatted needs --formatted_dir, --image_root and --name")
        if self.dataset == "csv":
            require(self.train_csv and self.image_root and self.name,
                    "--dataset=csv needs --train_csv, --image_root and --name")
            require(not self.observed_negatives, "--observed_negatives needs full training labels, a CSV has none")
        else:
            require(not (self.train_csv or self.val_csv or self.test_csv), "--*_csv flags apply with --dataset=csv")
        if self.name:
            require(self.name.replace("_", "").replace("-", "").isalnum(),
                    f"--name={self.name!r}: use letters, digits, '-' and '_' only")
        require(self.observed_negatives >= 0, f"--observed_negatives={self.observed_negatives} must be >= 0")
        require(0 < self.shard_size_mb <= 100_000, f"--shard_size_mb={self.shard_size_mb} must be in (0, 100000]")
        require(self.workers >= 1, f"--workers={self.workers} must be at least 1")
        require(self.resize_to >= 0, f"--resize_to={self.resize_to} must be 0 (keep the source images) or a side")
        require(1 <= self.max_image_pixels <= image_limits.DEFAULT_MAX_PIXELS,
                f"--max_image_pixels={self.max_image_pixels} must be in 1..{image_limits.DEFAULT_MAX_PIXELS:,}: the "
                "trainer decodes no image above that")

    @property
    def dataset_name(self):
        return self.name or self.dataset


def read_source(config, log=print):
    """The dataset as released, downloading it first with --download."""
    from spml_tf.data.datasets import coco, cub, formatted, source, user_csv, voc

    class_names = formatted.read_class_names(config.classes) if config.classes else None
    if config.dataset in ("voc", "coco", "nuswide", "cub") and not config.download:
        hint = ("; or add --download to fetch it there" if config.dataset in DOWNLOADABLE
                else f"; download CUB_200_2011.tgz from {CUB_URL} and extract it" if config.dataset == "cub" else "")
        source.require_dir(config.raw_dir, "--raw_dir", f"the extracted {config.dataset} release{hint}")
    if config.download:
        fetch_release(config, log)
    if config.dataset == "voc":
        return voc.read(config.raw_dir)
    if config.dataset == "coco":
        return coco.read(config.raw_dir)
    if config.dataset == "cub":
        return cub.read(config.raw_dir)
    if config.dataset == "nuswide":
        return formatted.read_nuswide(config.raw_dir, config.image_root or None, class_names)
    if config.dataset == "formatted":
        return formatted.read(config.formatted_dir, config.image_root, config.name, class_names)
    return user_csv.read(config.train_csv, config.image_root, config.name, config.val_csv or None,
                         config.test_csv or None, class_names)


def fetch_release(config, log):
    """Downloads and extracts the official archives of VOC or COCO into --raw_dir."""
    from spml_tf.core import download

    if "://" in config.raw_dir:
        raise UsageError("--download writes to a local --raw_dir; copy the extracted files to the bucket afterwards")
    for archive in download.ARCHIVES[config.dataset]:
        if config.mirror:
            archive = download.with_mirror(archive, config.mirror)
        path = download.fetch(archive, config.raw_dir, log=log)
        download.extract(path, config.raw_dir, log=log)


def split_inputs(release, observed_negatives=0, log=print):
    """The train, val and test SplitInputs of a release: observation, then the 80/20 split (docs/method.md
    section 4)."""
    import numpy as np

    from spml_tf.data import labels
    from spml_tf.data.shard_writer import SplitInput

    problems = {"train": {}, "val": {}, "test": {}}
    for problem in release.problems:
        problems[problem.split].setdefault(problem.row, problem.reason)
    train = release.train
    if release.train_labels_are_full:
        # From the FULL official train matrix, before the split: the original's files bit for bit.
        full = train.labels
        observed = labels.observe_single_positive(full, num_negatives=observed_negatives, allow_empty_rows=True)
        for row in np.flatnonzero(full.max(axis=1, initial=0) == 0):
            problems["train"].setdefault(int(row), "no positive label")
    else:
        full, observed = np.zeros_like(train.labels), train.labels

    def take(name, part, part_full, part_observed, known, source_split, rows=None):
        """The SplitInput of `rows` of `part` (all of them by default), its problems renumbered to match."""
        rows = np.arange(len(part)) if rows is None else rows
        position = {int(row): i for i, row in enumerate(rows)}
        return SplitInput(
            name=name, paths=tuple(part.paths[r] for r in rows), ids=tuple(part.ids[r] for r in rows),
            full=part_full[rows], observed=part_observed[rows], full_labels_known=known,
            problems=tuple((position[r], reason) for r, reason in sorted(problems[source_split].items())
                           if r in position),
            origin=source_split,
        )

    known = release.train_labels_are_full
    if release.val is None:
        train_rows, val_rows = labels.train_val_split(len(train))
        splits = [take("train", train, full, observed, known, "train", train_rows),
                  take("val", train, full, observed, known, "train", val_rows)]
        if not known:
            log(f"No --val_csv: {len(val_rows):,} of the {len(train):,} training images are held out as the "
                "validation set. Their labels are single-positive too, so training selects epochs on observed "
                "labels (the `observed` validation variant).")
    else:
        val_observed = labels.observe_single_positive(release.val.labels, allow_empty_rows=True)
        splits = [take("train", train, full, observed, known, "train"),
                  take("val", release.val, release.val.labels, val_observed, True, "val")]
    if release.test is not None:  # nothing is hidden at test time: observed = full
        splits.append(take("test", release.test, release.test.labels, release.test.labels, True, "test"))
    return splits


def convert(config, log=print):
    """Runs the whole conversion and returns {split: Manifest}."""
    from spml_tf.data import datasets, shard_writer
    from spml_tf.data.datasets import coco, cub, voc

    out_dir = config.out_dir or datasets.default_data_dir(config.dataset_name, config.observed_negatives)
    release = read_source(config, log)
    expected = {"voc": voc.EXPECTED, "coco": coco.EXPECTED, "cub": cub.EXPECTED}.get(config.dataset, {})
    found = {split: len(getattr(release, split)) for split in expected}
    if found != expected:
        log(f"note: this is not the whole {config.dataset} release: it has {found['train']:,} official train and "
            f"{found['test']:,} test images with a label, the whole release {expected['train']:,} and "
            f"{expected['test']:,}")
    log(f"{release.name}: {len(release.class_names)} classes, {len(release.train):,} official train images"
        + (f", {len(release.test):,} test images" if release.test is not None else ", no test set")
        + f" -> {out_dir}")
    splits = split_inputs(release, config.observed_negatives, log)
    options = {"observed_negatives": config.observed_negatives}
    manifests = shard_writer.write_splits(
        out_dir, release.name, release.class_names, splits, skip_bad_images=config.skip_bad_images,
        shard_size_mb=config.shard_size_mb, workers=config.workers, resize_to=config.resize_to, log=log,
        options=options, max_pixels=config.max_image_pixels)
    preset = release.name if release.name in ("voc", "coco", "nuswide", "cub") else "custom"
    log(f"Done. Train with: python train_main.py --dataset={preset} --data_dir={out_dir}")
    return manifests
