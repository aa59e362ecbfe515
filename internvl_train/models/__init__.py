"""Models, one folder each (internvit/, internvl_c/, qllama/, internvl_g/, chat/), plus weight I/O (weights.py)
and ZeRO-3 construction (zero3.py).

Import submodules directly (e.g. `from internvl_train.models.internvl_c.build import build_internvl_c`); this package
file stays torch-free so `internvl_train.models.config` can be imported for fast config validation.
"""
