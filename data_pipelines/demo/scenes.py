"""Synthetic scenes for the embedded demo: one coloured shape on a plain background, 64x64 pixels.

Every attribute is visually unambiguous at that size, so a tiny ViT learns them in minutes on a CPU:
shape x colour are the zero-shot classes; size, position and background vary independently and appear in
the captions (written in several phrasings), which makes retrieval, captioning and one-attribute hard
negatives meaningful.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass

from PIL import Image, ImageDraw

IMAGE_SIZE = 64
SHAPES = ("circle", "square", "triangle", "cross")
COLORS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (40, 70, 230), "yellow": (235, 215, 30),
          "purple": (150, 40, 190)}
SIZES = {"small": 7, "large": 13}  # radius in pixels
POSITIONS = {"top left": (16, 16), "top right": (48, 16), "bottom left": (16, 48), "bottom right": (48, 48),
             "center": (32, 32)}
BACKGROUNDS = {"black": (10, 10, 10), "white": (245, 245, 245), "gray": (128, 128, 128)}
CAPTION_TEMPLATES = (
    "a {size} {color} {shape} in the {position} on a {background} background",
    "a {color} {shape}, {size}, at the {position} of a {background} image",
    "there is a {size} {color} {shape} in the {position}",
    "{background} background with a {size} {color} {shape} in the {position}",
    "a {shape} that is {color} and {size}, placed in the {position}, on {background}",
)
ZERO_SHOT_TEMPLATES = ("a {}.", "a picture of a {}.", "an image of a {} on a plain background.",
                       "there is a {} in the image.", "a small or large {}.")


@dataclass(frozen=True)
class Scene:
    shape: str
    color: str
    size: str
    position: str
    background: str

    @property
    def classname(self) -> str:
        return f"{self.color} {self.shape}"

    @property
    def label(self) -> int:
        return SHAPES.index(self.shape) * len(COLORS) + list(COLORS).index(self.color)

    def attributes(self) -> dict[str, str]:
        return asdict(self)


def classnames() -> list[str]:
    """Zero-shot class names; line i is label i."""
    return [f"{color} {shape}" for shape in SHAPES for color in COLORS]


def random_scene(rng: random.Random) -> Scene:
    return Scene(rng.choice(SHAPES), rng.choice(list(COLORS)), rng.choice(list(SIZES)),
                 rng.choice(list(POSITIONS)), rng.choice(list(BACKGROUNDS)))


def caption(scene: Scene, rng: random.Random) -> str:
    return rng.choice(CAPTION_TEMPLATES).format(**scene.attributes())


def render(scene: Scene, rng: random.Random) -> Image.Image:
    """The scene with small jitter in colour and placement (so no two images are identical)."""
    jitter = lambda rgb: tuple(max(0, min(255, c + rng.randint(-15, 15))) for c in rgb)  # noqa: E731
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), jitter(BACKGROUNDS[scene.background]))
    draw = ImageDraw.Draw(image)
    cx, cy = (c + rng.randint(-2, 2) for c in POSITIONS[scene.position])
    r, fill = SIZES[scene.size], jitter(COLORS[scene.color])
    if scene.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif scene.shape == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif scene.shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    else:
        w = max(2, r // 3)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
    return image
