"""The one tokenizer loader: a local Hugging Face tokenizer directory, never downloaded, never remote code.

Which directory a run takes is the stage's rule, each written once: stages 1-2 `stages/config.tokenizer_source`
(torch-free, so the config gate checks it), stage 3 `stages/sft_model.sft_tokenizer_candidates` (the planner
uses the same list). Everything that opens a tokenizer (stages, planner, evaluation, chat inference, checkpoint
conversion) calls `load_local_tokenizer`.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable, Optional

log = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer_config.json"


def has_tokenizer(path: Optional[str | Path]) -> bool:
    """`path` is a directory holding a Hugging Face tokenizer."""
    return bool(path) and os.path.isfile(os.path.join(os.path.expanduser(str(path)), TOKENIZER_FILE))


def first_tokenizer_dir(candidates: Iterable[Optional[str | Path]]) -> Optional[str]:
    """The first candidate directory that holds a tokenizer (None when none does)."""
    return next((os.path.expanduser(str(p)) for p in candidates if has_tokenizer(p)), None)


def load_local_tokenizer(path: str | Path) -> Any:
    """The tokenizer in local directory `path`: local files only, no remote code (a checkpoint that needs its
    own tokenizer code is refused, not executed)."""
    from transformers import AutoTokenizer

    path = os.path.expanduser(str(path))
    if not has_tokenizer(path):
        raise FileNotFoundError(f"{path}: no {TOKENIZER_FILE} (give a local Hugging Face tokenizer directory; "
                                "tokenizers are never downloaded)")
    log.info("tokenizer from %s", path)
    return AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
