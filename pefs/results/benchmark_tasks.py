"""What pefs knows of the field's benchmark tasks, stdlib only, for the data sources and the reports alike.

VTAB-1k's 19 tasks by group, in the order the VPT / NOAH / SSF tables print them, as the folder names of the
community layout, with their class counts (:mod:`pefs.data.benchmarks.vtab` reads these folders; the report's
VTAB-1k table orders its columns by this list).
"""

from __future__ import annotations

GROUPS: dict[str, dict[str, int]] = {
    "natural": {"cifar": 100, "caltech101": 102, "dtd": 47, "oxford_flowers102": 102, "oxford_iiit_pet": 37,
                "svhn": 10, "sun397": 397},
    "specialized": {"patch_camelyon": 2, "eurosat": 10, "resisc45": 45, "diabetic_retinopathy": 5},
    "structured": {"clevr_count": 8, "clevr_dist": 6, "dmlab": 6, "kitti": 4, "dsprites_loc": 16, "dsprites_ori": 16,
                   "smallnorb_azi": 18, "smallnorb_ele": 9},
}
#: task -> its group, in table order
TASKS: dict[str, str] = {task: group for group, tasks in GROUPS.items() for task in tasks}
#: the ``--data`` spellings of VTAB-1k: the reported protocol and its hyper-parameter search
VTAB_SPECS = ("vtab1k", "vtab1k-val")
