"""``pefs explain``: where a saved model looks, before and after tuning (PNG heat maps per image)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``explain`` and its flags to ``sub``."""
    p = sub.add_parser("explain", help="heat maps of where a saved model looks, before vs after tuning (PNGs)",
                       description="One PNG per image: for transformer encoders the attention rollout (Abnar & "
                       "Zuidema 2020) and the last block's class-token attention, for CNNs Grad-CAM of the "
                       "predicted class (or --class), each for the model directory's base and for the tuned model "
                       "side by side, titled with the predicted class and its probability. With --support, also "
                       "the patch-match head's Hungarian patch pairs between each image and the support images.")
    p.add_argument("model_dir", metavar="MODEL_DIR", help="a model directory (pefs tune --final DIR)")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="image files, folders, or .txt files of paths")
    p.add_argument("--out", "-O", required=True, metavar="DIR", help="folder for the PNGs (<image>.png; created, "
                   "never inside MODEL_DIR or an input)")
    p.add_argument("--class", dest="target", metavar="NAME", help="draw Grad-CAM for this class instead of the "
                   "predicted one (attention maps do not depend on a class)")
    p.add_argument("--support", metavar="DIR", help="support images as <DIR>/<class>/<image>: also draw the "
                   "patch-match pairs (<image>_matches.png); a model directory keeps no support images")
    p.add_argument("--matches", type=int, default=12, metavar="N", help="matched pairs drawn per image, the "
                   "strongest first (default 12)")
    p.add_argument("--allow-different-base", action="store_true", help="load even if the backbone's weights "
                   "differ from those the model was trained on")
    return p


def run(a: argparse.Namespace) -> int:
    """Write the PNGs."""
    from pefs.model.explain_run import explain_command

    return explain_command(a.model_dir, a.images, a.out, a.target, a.support, a.allow_different_base, a.matches)
