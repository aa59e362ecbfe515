"""InternViT, the vision tower of every stage: modeling (transformers' InternVLVisionModel + drop path,
checkpointing) and the official checkpoint layout (official.py)."""
