"""InternVL-Chat (stage 3): ViT -> pixel shuffle -> MLP -> any causal LM; configuration, LLM loading, build,
the official chat layout and the optional QLLaMA bridge."""
