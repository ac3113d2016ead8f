"""Before the few shots: train a backbone on a data source's base classes (never its novel classes).

One module per objective (:mod:`supervised`, :mod:`contrastive`, :mod:`mae`) and ProtoNet meta-training
(:mod:`protonet`), each an ``nn.Module`` whose ``forward(*batch)`` is the loss; :mod:`data` chooses the base images
and batches them; :mod:`loop` trains through the runtime's Accelerator; :mod:`checkpoint` writes the directory
``pefs tune --checkpoint DIR`` loads, with its identity and a weights fingerprint checked at load.
"""

from pefs.pretrain.loop import pretrain

__all__ = ["pretrain"]
