"""The tuned model: :func:`wrap` a backbone with strategies into a :class:`PefsModel`; its directory on disk
(:mod:`pefs.model.directory`); inference on new images (:mod:`pefs.model.inference`, :mod:`pefs.model.predict`)."""

from pefs.model.wrap import PefsModel, wrap

__all__ = ["PefsModel", "wrap"]
