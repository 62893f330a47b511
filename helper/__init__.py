"""The run layer: configuration, the method table and method objects, the one training loop, logging.

Layers, each importing only from the ones below it (``tests/test_layers.py`` checks it):

* ``core/``: errors, device, checkpoint I/O (imports nothing of the project);
* ``dataset/``, ``models/``, ``distiller_zoo/``, ``crd/``: import only ``core/``;
* ``helper/``: flags and their wording (``options``, ``method_table``), the method objects (``methods``), the run
  pieces (``engine``, ``schedule``, ``calibration``, ``logger``, ``run_setup``) and the two trainers
  (``teacher_trainer``, ``student_trainer``), wired by ``train_teacher.py`` / ``train_student.py``.
"""
