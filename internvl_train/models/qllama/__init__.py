"""QLLaMA: LLaMA decoder layers with cross-attention into the ViT, and the ITM/ITC/ITG attention masks."""
