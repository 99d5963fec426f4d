"""Training data: kohya-style folders, bucketing, captions and the epoch sampler."""
from .buckets import (
    BucketChoice,
    BucketSelector,
    BucketSettings,
    adjust_bucket_settings,
    crop_ltrb,
    make_bucket_resolutions,
    trim_and_resize,
)
from .captions import CaptionOptions, count_tags, process_caption
from .dataset import (
    AugmentOptions,
    DatasetImage,
    LoraDataset,
    StepCounts,
    cache_latents,
    count_steps,
    latents_npz_path,
)
from .folders import IMAGE_EXTENSIONS, DatasetScan, Finding, ImageEntry, Subset, parse_folder_name, scan_dataset
from .images import inspect_image, load_image, read_image_size
from .plan import Batch, DatasetError, DatasetPlan, build_dataset_plan, format_findings

__all__ = [
    "Batch",
    "DatasetError",
    "DatasetPlan",
    "build_dataset_plan",
    "format_findings",
    "AugmentOptions",
    "BucketChoice",
    "BucketSelector",
    "BucketSettings",
    "CaptionOptions",
    "DatasetImage",
    "DatasetScan",
    "Finding",
    "IMAGE_EXTENSIONS",
    "ImageEntry",
    "LoraDataset",
    "StepCounts",
    "Subset",
    "adjust_bucket_settings",
    "cache_latents",
    "count_steps",
    "count_tags",
    "crop_ltrb",
    "inspect_image",
    "latents_npz_path",
    "load_image",
    "make_bucket_resolutions",
    "parse_folder_name",
    "process_caption",
    "read_image_size",
    "scan_dataset",
    "trim_and_resize",
]
