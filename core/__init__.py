"""The bottom layer: what every other folder shares and nothing of the project that it imports.

* ``core.errors``: UserError and its kinds, exit codes, ``run_main`` (one line on stderr, never a traceback);
* ``core.device``: device resolution, ``to_device``, ``autocast``, backend settings;
* ``core.checkpoint``: atomic writes, safe (weights-only) reads, file digests.

``core/`` imports nothing above it; ``dataset/``, ``models/``, ``distiller_zoo/`` and ``crd/`` import only ``core/``,
and ``helper/`` and the scripts stand on all of them (``tests/test_layers.py`` checks it).
"""
