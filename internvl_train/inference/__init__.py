"""Using a trained chat model: prompts and batched generation (prompt.py), exports for transformers
and for the official InternVL code (export.py)."""
