"""Evaluation metrics: retrieval, zero-shot classification, captioning, VQA; results.jsonl records."""
from .captioning import caption_metrics, constant_caption_baseline, most_frequent_caption, normalize_caption
from .results import append_results, read_results
from .retrieval import gather_retrieval_inputs, retrieval_metrics
from .vqa import majority_answer_baseline, normalize_answer, vqa_accuracy, vqa_metrics, write_vqa_results
from .zeroshot import zero_shot_accuracy, zero_shot_classifier

__all__ = [
    "append_results", "caption_metrics", "constant_caption_baseline", "gather_retrieval_inputs",
    "majority_answer_baseline", "most_frequent_caption", "normalize_answer", "normalize_caption", "read_results",
    "retrieval_metrics", "vqa_accuracy", "vqa_metrics", "write_vqa_results", "zero_shot_accuracy",
    "zero_shot_classifier",
]
