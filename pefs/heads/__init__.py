"""Classifier heads, combinable with any strategy (``--head``): one module each, named in :mod:`pefs.heads.registry`.

* ``linear`` / ``linear-proto`` (:mod:`pefs.heads.linear`), ``prototype`` (:mod:`pefs.heads.prototype`),
  ``patch-match`` (:mod:`pefs.heads.patch_match`), ``logistic`` (:mod:`pefs.heads.logistic`).
"""
