"""Evaluation metrics: retrieval, zero-shot classification, captioning, VQA; results.jsonl records; tables."""
from .captioning import caption_metrics, constant_caption_baseline, most_frequent_caption, normalize_caption
from .results import append_results, read_results
from .retrieval import RETRIEVAL_TIES, gather_retrieval_inputs, retrieval_metrics
from .tables import column_name, render_table, rows_by_encoder
from .vqa import majority_answer_baseline, normalize_answer, vqa_accuracy, vqa_metrics, write_vqa_results
from .zeroshot import ZERO_SHOT_TIES, zero_shot_accuracy, zero_shot_classifier

__all__ = [
    "RETRIEVAL_TIES", "ZERO_SHOT_TIES", "append_results", "caption_metrics", "column_name", "constant_caption_baseline",
    "gather_retrieval_inputs", "majority_answer_baseline", "most_frequent_caption", "normalize_answer",
    "normalize_caption", "read_results", "render_table", "retrieval_metrics", "rows_by_encoder", "vqa_accuracy",
    "vqa_metrics", "write_vqa_results", "zero_shot_accuracy", "zero_shot_classifier",
]
