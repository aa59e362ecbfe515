"""Models: InternViT, the LLaMA text tower, QLLaMA, InternVL-C/G heads, the chat model, checkpoint adapters.

Import submodules directly (e.g. `from internvl_train.models.builder import build_internvl_c`); this package
file stays torch-free so `internvl_train.models.config` can be imported for fast config validation.
"""
