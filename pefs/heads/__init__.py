"""Classifier heads, combinable with any strategy (``--head``): one module each, named in :mod:`pefs.heads.registry`.

* ``linear`` / ``linear-proto`` (:mod:`pefs.heads.linear`), ``prototype`` (:mod:`pefs.heads.prototype`),
  ``patch-match`` (:mod:`pefs.heads.patch_match`), ``logistic`` (:mod:`pefs.heads.logistic`),
  ``matching`` (Matching Networks, :mod:`pefs.heads.matching`), ``dn4`` (:mod:`pefs.heads.dn4`); transductive
  (they read the task's unlabelled queries together): ``bd-cspn`` (:mod:`pefs.heads.bd_cspn`), ``tim``
  (:mod:`pefs.heads.tim`).

Not here: DMF's dynamic meta-filter (Xu et al. 2021, "Learning Dynamic Alignment via Meta-filter for Few-shot
Learning"). Its position-wise filters and sampling offsets come from a filter-generation network (and a neural ODE)
meta-trained on base classes; a head here gets only one task's features, with nothing to train that generator on,
and an untrained generator would filter with random weights.
"""
