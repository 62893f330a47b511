"""Training loops, checkpoints, logging, devices and small utilities.

Layers, each importing only from the ones below it:

* bottom: ``helper.errors`` (UserError, exit codes, run_main), ``helper.device`` (device resolution, ``to_device``,
  ``autocast``) and ``helper.checkpoint`` (atomic writes, safe reads). They import nothing from the project except
  each other, so ``dataset/``, ``models/``, ``distiller_zoo/`` and ``crd/`` may use them (and nothing else of
  ``helper/``); ``tests/test_layers.py`` checks it.
* the data and model folders: ``dataset/``, ``models/``, ``distiller_zoo/``, ``crd/``.
* the rest of ``helper/``: flags and their wording (``options``, ``method_table``), the method objects
  (``methods``), the run pieces (``engine``, ``schedule``, ``calibration``, ``logger``, ``run_setup``) and the
  two trainers (``teacher_trainer``, ``student_trainer``), wired by ``train_teacher.py`` / ``train_student.py``.
"""
