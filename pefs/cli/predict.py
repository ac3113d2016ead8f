"""``pefs predict``: classify images with a saved model directory (``pefs tune --final DIR``)."""

from __future__ import annotations

import argparse

from pefs.config import TrainConfig
from pefs.config.fields import choices


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``predict`` and its flags to ``sub``."""
    p = sub.add_parser("predict", help="classify images with a saved model directory (pefs tune --final DIR)",
                       description="Top-k class names and probabilities per image, as CSV or JSON Lines, batch by "
                       "batch. Images that cannot be decoded are listed by path and the rest still run; the exit "
                       "status is 1 if any failed.")
    p.add_argument("model_dir", metavar="MODEL_DIR", help="a model directory (pefs tune --final DIR)")
    p.add_argument("images", metavar="IMAGES", nargs="*", help="image files, folders, or .txt files of paths")
    p.add_argument("--out", "-O", default="predictions.csv", help="output file, or - for stdout "
                   "(default predictions.csv)")
    p.add_argument("--format", choices=["csv", "jsonl"], help="default: from --out's suffix, else csv")
    p.add_argument("--top-k", type=int, default=1, help="class names and probabilities per image (default 1)")
    p.add_argument("--batch-size", type=int, default=16, help="images per batch (default 16)")
    p.add_argument("--labels", action="store_true", help="each image's folder names its true class "
                   "(<root>/<class>/<image>): also print accuracy and a confusion matrix")
    p.add_argument("--allow-different-base", action="store_true", help="load even if the backbone's weights "
                   "differ from those the model was trained on (the results will differ)")
    p.add_argument("--precision", choices=choices(TrainConfig, "inference_precision"), help="autocast of the "
                   "forward passes, as tune's --inference-precision (default: what tune used, recorded in "
                   "MODEL_DIR, else auto)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    return p


def run(a: argparse.Namespace) -> int:
    """Write the predictions; 1 if any image could not be decoded."""
    from pefs.model.predict import predict_command

    return predict_command(a.model_dir, a.images, a.out, a.format, a.top_k, a.batch_size, a.labels,
                           a.allow_different_base, not a.quiet, a.precision)
