"""Chat with an exported InternVL-Chat model about an image, with the training template and tiling.

    python -m internvl_train.chat --model runs/sft/export --image photo.png --question "What color is it?"
    python -m internvl_train.chat --model runs/sft/export --image photo.png      # interactive (a terminal)

One-shot: prints the answer. Interactive: one question per line, the conversation is kept (the image sits in
the first question, as in training); an empty line or EOF ends. `--question -` reads questions from stdin,
one per line, each answered independently (scripting).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from PIL import Image


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m internvl_train.chat", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="chat export directory (runs/sft/export or its official/)")
    parser.add_argument("--image", action="append", default=[],
                        help="image file; repeat for several images (Image-1, Image-2, ... as in training)")
    parser.add_argument("--question", help="answer this and exit; '-' answers each stdin line; omitted: "
                                           "interactive when stdin is a terminal")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    return parser.parse_args(argv)


def load_images(paths: Sequence[str]) -> list[Image.Image]:
    images = []
    for path in paths:
        if not Path(path).is_file():
            raise SystemExit(f"--image {path}: no such file")
        try:
            with Image.open(path) as im:
                images.append(im.convert("RGB"))
        except OSError as e:
            raise SystemExit(f"--image {path}: not a readable image ({e})") from None
    return images


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if not (Path(args.model) / "config.json").is_file():
        raise SystemExit(f"--model {args.model}: no config.json; pass a stage-3 export directory "
                         "(e.g. runs/sft/export)")
    images = load_images(args.image)
    if args.question is None and not sys.stdin.isatty():
        raise SystemExit("no --question and stdin is not a terminal: pass --question TEXT (or '-' to read "
                         "questions from stdin)")
    import torch

    from internvl_train.inference.prompt import generate, load_chat_for_inference

    torch.set_grad_enabled(False)
    model, prompter = load_chat_for_inference(args.model)

    def answer(question: str, history: Sequence[tuple[str, str]] = ()) -> str:
        return generate(model, prompter, [(question, images)], args.max_new_tokens, history=history)[0]

    if args.question == "-":
        for line in sys.stdin:
            if line.strip():
                print(answer(line.strip()), flush=True)
    elif args.question is not None:
        print(answer(args.question))
    else:
        interactive(answer)
    return 0


def interactive(answer) -> None:
    """A conversation: each answer is appended to the history the next question sees."""
    history: list[tuple[str, str]] = []
    print("Ask about the image (empty line or Ctrl-D to quit).")
    while True:
        try:
            question = input("you> ").strip()
        except EOFError:
            break
        if not question:
            break
        reply = answer(question, history)
        print(f"model> {reply}", flush=True)
        history += [("human", question), ("gpt", reply)]


if __name__ == "__main__":
    sys.exit(main())
