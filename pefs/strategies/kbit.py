"""QLoRA's base weights (Dettmers et al. 2023): the backbone's Linear layers held in 4-bit NF4 (double-quantised,
bf16 compute) or 8-bit (LLM.int8) by bitsandbytes, frozen, with the tuner's update in full precision beside them.

Followed from peft's documented route (``BitsAndBytesConfig`` + ``prepare_model_for_kbit_training`` + a LoRA
config): a timm model has no ``from_pretrained(quantization_config=...)``, so the Linear layers are swapped for
bitsandbytes' own here, the model is flagged ``is_loaded_in_4bit`` / ``is_loaded_in_8bit`` (what peft reads to
inject its bitsandbytes LoRA layers) and prepared by peft. The weights are quantised when the engine moves the
model to the GPU. bitsandbytes runs on CUDA only: :func:`check_kbit` refuses anything else before a model is built.
This path was written, not run, where pefs is developed (no GPU there; README, "QLoRA").
"""

from __future__ import annotations

import importlib.util

import torch
from torch import nn

from pefs.backbones import Backbone
from pefs.backbones.layout import replace_module
from pefs.errors import PefsError

#: option value -> what it loads
KINDS = {"4bit": "4-bit NF4", "8bit": "8-bit (LLM.int8)"}


def check_kbit(quantize: str, strategy: str) -> None:
    """Refuse ``-o quantize=...`` where bitsandbytes cannot run: without a CUDA GPU, or without the package."""
    if quantize == "none":
        return
    if quantize not in KINDS:
        raise PefsError(f"option quantize={quantize!r} of strategy {strategy!r} must be one of none, "
                        f"{', '.join(KINDS)}")
    what = f"option quantize={quantize} of strategy {strategy!r} holds the base weights in {KINDS[quantize]} " \
           "through bitsandbytes"
    if not torch.cuda.is_available():
        raise PefsError(f"{what}, which runs on a CUDA GPU only; this machine has none: drop -o quantize={quantize} "
                        "(LoRA on full-precision weights) or run on a GPU")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise PefsError(f"{what}, which is not installed: pip install bitsandbytes (or pip install 'pefs[quantize]')")


def quantize_linears(bb: Backbone, quantize: str) -> int:
    """Swap every Linear layer of ``bb`` but its head for a frozen bitsandbytes one of the same weights and flag the
    model for peft; returns how many were swapped (a backbone with none is refused)."""
    import bitsandbytes as bnb
    from peft import prepare_model_for_kbit_training

    head = bb.head_name
    linears = [(n, m) for n, m in bb.model.named_modules()
               if isinstance(m, nn.Linear) and n != head and not n.startswith(head + ".")]
    if not linears:
        raise PefsError(f"quantize={quantize} holds Linear layers in k-bit; {bb.name} has none outside its head "
                        "(bitsandbytes quantises no convolution): use lora without quantize")
    for name, m in linears:
        w = m.weight.data
        if quantize == "4bit":
            q = bnb.nn.Linear4bit(m.in_features, m.out_features, bias=m.bias is not None,
                                  compute_dtype=torch.bfloat16, compress_statistics=True, quant_type="nf4")
            q.weight = bnb.nn.Params4bit(w, requires_grad=False, compress_statistics=True, quant_type="nf4")
        else:
            q = bnb.nn.Linear8bitLt(m.in_features, m.out_features, bias=m.bias is not None,
                                    has_fp16_weights=False, threshold=6.0)
            q.weight = bnb.nn.Int8Params(w, requires_grad=False, has_fp16_weights=False)
        if m.bias is not None:
            q.bias = nn.Parameter(m.bias.data, requires_grad=False)
        replace_module(bb.model, name, q)
    setattr(bb.model, "is_loaded_in_4bit" if quantize == "4bit" else "is_loaded_in_8bit", True)
    prepare_model_for_kbit_training(bb.model, use_gradient_checkpointing=False)
    return len(linears)
