"""Data: dataset adapters, few-shot sampling and transforms."""

from pefs.data.sampling import Episode, FewShotSplit, episodes, kshot_split, stratified_split
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
from pefs.data.transforms import augment_transform, decode, eval_transform

__all__ = ["DEFAULT_DATASET", "Dataset", "Episode", "FewShotSplit", "ImageSet", "augment_transform", "decode",
           "episodes", "eval_transform", "from_arrays", "kshot_split", "load_dataset", "load_default",
           "load_folder", "load_hf", "stratified_split"]
