"""The bottom layer: what every other folder shares and nothing of the project that it imports.

* ``core.errors``: UserError and its kinds, exit codes, ``run_main`` (one line on stderr, never a traceback);
* ``core.device``: device resolution, ``to_device``, ``autocast``, backend settings;
* ``core.checkpoint``: checkpoint and JSON writes, safe (weights-only) reads, file digests;
* ``core.fs``: the one checked place of file-system errors (every ``OSError`` of a path as one sentence), atomic
  writes, what a path is (a FIFO, a device), stdout/stderr that never end a command with a traceback;
* ``core.env``: the registry of every environment variable the project reads, parsed like a flag;
* ``core.numbers``: ``Number``, the range check of every numeric flag and numeric environment variable.

``core/`` imports nothing above it; ``dataset/``, ``models/``, ``distiller_zoo/`` and ``crd/`` import only ``core/``,
and ``helper/`` and the scripts stand on all of them (``tests/test_layers.py`` checks it).
"""
