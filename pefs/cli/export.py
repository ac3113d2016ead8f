"""``pefs export``: write a saved model for tools that do not know pefs (merged safetensors, ONNX, peft)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``export`` and its flags to ``sub``."""
    e = sub.add_parser("export", help="write a saved model for tools that do not know pefs",
                       description="merged: one safetensors state dict that timm.create_model(name, "
                       "num_classes=N) loads strictly, head included (mergeable strategies); onnx: an ONNX "
                       "graph checked against PyTorch with onnxruntime.")
    e.add_argument("model_dir", metavar="MODEL_DIR", help="a model directory (pefs tune --final DIR)")
    e.add_argument("--format", choices=["merged", "onnx", "peft"], default="merged",
                   help="merged | onnx | peft (an adapter directory peft.PeftModel.from_pretrained loads; lora and "
                   "peft:<method> on transformers *ForImageClassification models). Default merged")
    e.add_argument("--out", help="output file (default MODEL_DIR/model.safetensors or MODEL_DIR/model.onnx)")
    e.add_argument("--allow-different-base", action="store_true", help="load even if the backbone's weights "
                   "differ from those the model was trained on")
    return e


def run(a: argparse.Namespace) -> int:
    """Write the exported model."""
    from pefs.export.formats import export_command

    return export_command(a.model_dir, a.format, a.out, a.allow_different_base)
