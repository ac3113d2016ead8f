"""Classifier heads, combinable with any strategy (``--head``): one module each, named in :mod:`pefs.heads.registry`.

* ``linear`` / ``linear-proto`` (:mod:`pefs.heads.linear`), ``prototype`` (:mod:`pefs.heads.prototype`),
  ``patch-match`` (:mod:`pefs.heads.patch_match`), ``logistic`` (:mod:`pefs.heads.logistic`),
  ``matching`` (Matching Networks, :mod:`pefs.heads.matching`), ``dn4`` (:mod:`pefs.heads.dn4`); transductive
  (they read the task's unlabelled queries together): ``bd-cspn`` (:mod:`pefs.heads.bd_cspn`), ``tim``
  (:mod:`pefs.heads.tim`).
"""
