"""A small byte-level BPE tokenizer for the tiny demo models, trained offline on the demo captions plus
general question/answer English (what the SFT demo conversations use). Saved as a Hugging Face tokenizer
directory: `transformers.AutoTokenizer.from_pretrained(dir)` loads it."""
from __future__ import annotations

from typing import Iterable

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>")  # ids 0..5; pad = 0
VOCAB_SIZE = 1024
GENERAL_TEXT = """
summarize: English caption: user assistant system You are a helpful assistant.
What is in the image? What color is the shape? What shape is it? Where is the shape? Is it small or large?
What is the background color? Describe the image. Describe the picture in detail. How many shapes are there?
Is there a circle in the image? Yes, there is. No, there is not. The answer is yes. The answer is no.
Answer the question using a single word or phrase. Please answer briefly. Can you tell me more?
The image shows one shape. It is located in the corner of the image, near the middle, at the edge.
left right top bottom center middle above below next to inside outside on under over between behind
one two three four five many some none all a an the this that these those it its they there here
is are was were be been has have had do does did can could will would should may might must
what which who where when why how color colour shape size position background object picture photo
red green blue yellow purple orange black white gray grey pink brown dark light bright
circle square triangle cross rectangle star line dot round sharp big small large tiny huge
yes no not and or but with without of in at to from for by about as than then so because
"""


def build_tokenizer(corpus: Iterable[str], out_dir: str) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=2,
                                  show_progress=False)
    tokenizer.train_from_iterator(list(corpus) + GENERAL_TEXT.split("\n"), trainer)
    # like Llama: BOS prepended, EOS left to the caller (stages append it where the recipe says)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>", padding_side="right",
                                   model_max_length=2048)
    fast.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    fast.save_pretrained(out_dir)
