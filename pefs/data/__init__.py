"""Data: dataset adapters, few-shot sampling, transforms and extra support views.

Undecodable images are errors, not skipped: :meth:`ImageSet.image` raises a PefsError naming the file (or
``split[index]``), so a corrupt file never silently shrinks a class below K shots. Every source decodes
through :func:`pefs.data.decoding.decode_image` (bit depth, alpha, palette, CMYK, EXIF, size limit).
"""

from pefs.data import benchmarks  # registers the benchmark specs (vtab1k:, miniimagenet:, ...) with load_dataset
from pefs.data.decoding import decode_image
from pefs.data.sampling import (
    Episode,
    FewShotSplit,
    episodes,
    hold_out,
    kshot_split,
    stratified_split,
    validation_index,
)
from pefs.data.sources import (
                               DEFAULT_DATASET,
                               Dataset,
                               ImageSet,
                               from_arrays,
                               load_dataset,
                               load_default,
                               load_folder,
                               load_hf,
)
from pefs.data.transforms import augment_transform, eval_transform
from pefs.data.views import extra_views, mask_patches

__all__ = ["DEFAULT_DATASET", "Dataset", "Episode", "FewShotSplit", "ImageSet", "augment_transform", "benchmarks",
           "decode_image",
           "episodes", "eval_transform", "from_arrays", "hold_out", "kshot_split", "load_dataset", "load_default",
           "load_folder", "load_hf", "mask_patches", "extra_views", "stratified_split",
           "validation_index"]
