"""The training tasks the one loop (:mod:`refsr.train.loop`) runs, by the config's ``task``.

=======================  ============================================================================
``task``                 what is trained
=======================  ============================================================================
``restoration``          a RefSR network (:class:`~refsr.train.tasks.restoration.RestorationTask`)
``contrastive_teacher``  C2-Matching's contrastive extractor, stage 1
                         (:class:`~refsr.train.tasks.contrastive.ContrastiveTask`)
``contrastive_student``  the same, stage 2: distilled from the teacher
``ccnet``                RefSR-Net's CC-Net, as a classification (:class:`~refsr.train.tasks.ccnet.CCNetTask`)
=======================  ============================================================================
"""

from __future__ import annotations

from refsr.train.task import Task
from refsr.train.tasks.ccnet import CCNetTask
from refsr.train.tasks.contrastive import ContrastiveTask
from refsr.train.tasks.restoration import RestorationTask

__all__ = ["TASKS"]

TASKS: dict[str, type[Task]] = {
    "restoration": RestorationTask,
    "contrastive_teacher": ContrastiveTask,
    "contrastive_student": ContrastiveTask,
    "ccnet": CCNetTask,
}
