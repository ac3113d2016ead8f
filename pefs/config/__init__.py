"""Every setting of a run as plain data (stdlib only): fields, run configs, identity and up-front checks.

* :mod:`pefs.config.fields` — ``setting()``: a field's default, type, help, flags and hash behaviour, once;
* :mod:`pefs.config.run` — :class:`TuneConfig` / :class:`TrainConfig`, their validation, the resolved copy;
* :mod:`pefs.config.identity` — the config hash, a run's key, content digests of files;
* :mod:`pefs.config.checks` — checks of user input shared by several entry points.
"""

from pefs.config.fields import check_choice, choices, defaults, field_types, result_fields, setting
from pefs.config.identity import SCHEMA_VERSION, config_hash, run_key
from pefs.config.run import (
    DEFAULT_HEAD,
    DEFAULT_MODEL,
    LINEAR_PROBE_HEAD,
    RUN_KEYS,
    TRAIN_KEYS,
    TrainConfig,
    TuneConfig,
    check_auto,
    head_of,
    resolved,
)

__all__ = ["DEFAULT_HEAD", "DEFAULT_MODEL", "LINEAR_PROBE_HEAD", "RUN_KEYS", "SCHEMA_VERSION", "TRAIN_KEYS",
           "TrainConfig", "TuneConfig", "check_auto", "check_choice", "choices", "config_hash", "defaults",
           "field_types", "head_of", "resolved", "result_fields", "run_key", "setting"]
