"""InternVL-C (stage 1): the LLaMA text tower, the CLIP attention-pooling heads, the model and its build."""
