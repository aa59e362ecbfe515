"""Conversation templates: a conversation becomes text pieces, each marked supervised or not.

The strings follow the official InternVL-Chat templates (internvl_chat/internvl/conversation.py):
chatml templates render `<|im_start|>system\\n{system}<|im_end|>` then `<|im_start|>user\\n{q}<|im_end|>` and
`<|im_start|>assistant\\n{a}<|im_end|>` (internvl2_5 puts `\\n` after every `<|im_end|>`, internlm2-chat /
Hermes-2 do not); vicuna_v1 renders `{system} USER: {q} ASSISTANT: {a}</s>`. Supervised = the assistant
text plus its end marker; the trailing newline, headers, system and user turns are context only.
`tokenizer` renders with the tokenizer's own `chat_template` (see `render_with_chat_template`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Optional

INTERNVL_SYSTEM_V2 = ("你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, "
                      "是一个有用无害的人工智能助手。")
INTERNVL_SYSTEM_V25 = "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")


@dataclass(frozen=True)
class Piece:
    text: str
    supervised: bool
    turn: int  # index of the human/assistant exchange this piece belongs to; -1 for the system prompt


@dataclass(frozen=True)
class ChatTemplate:
    """A separator-style template: every turn is header + message + end marker (+ unsupervised tail)."""

    name: str
    system_prefix: str  # before the system message
    system_suffix: str  # after it
    user_header: str
    user_end: str
    assistant_header: str  # context only
    answer_lead: str  # supervised, before the answer (vicuna's space after "ASSISTANT:")
    assistant_end: str  # supervised with the answer
    assistant_tail: str  # context only (internvl2_5's newline)
    default_system: str
    add_bos: Optional[bool]  # None: whatever the tokenizer does by default
    markers: tuple[str, ...]  # strings the tokenizer must know as single tokens

    def render(self, turns: list[tuple[str, str]], system: Optional[str]) -> list[Piece]:
        """turns: alternating ('human', text), ('gpt', text) exchanges, starting with human."""
        system_text = self.default_system if system is None else system
        pieces = [Piece(self.system_prefix + system_text + self.system_suffix, False, -1)]
        for i, (role, text) in enumerate(turns):
            exchange = i // 2
            if role == "human":
                pieces.append(Piece(self.user_header + text + self.user_end, False, exchange))
            else:
                pieces.append(Piece(self.assistant_header, False, exchange))
                pieces.append(Piece(self.answer_lead + text + self.assistant_end, True, exchange))
                if self.assistant_tail:
                    pieces.append(Piece(self.assistant_tail, False, exchange))
        return [p for p in pieces if p.text]


def _chatml(name: str, system: str, tail: str, add_bos: Optional[bool]) -> ChatTemplate:
    return ChatTemplate(
        name=name, system_prefix="<|im_start|>system\n", system_suffix="<|im_end|>" + tail,
        user_header="<|im_start|>user\n", user_end="<|im_end|>" + tail,
        assistant_header="<|im_start|>assistant\n", answer_lead="", assistant_end="<|im_end|>", assistant_tail=tail,
        default_system=system, add_bos=add_bos, markers=("<|im_start|>", "<|im_end|>"))


TEMPLATES: dict[str, ChatTemplate] = {
    # InternVL 2.5 / 3 (Qwen2.5 or InternLM2.5 LLMs); BOS only where the tokenizer adds one.
    "internvl2_5": _chatml("internvl2_5", INTERNVL_SYSTEM_V25, "\n", None),
    # InternVL 1.5 / 2 with InternLM2: chatml, BOS first.
    "internlm2-chat": _chatml("internlm2-chat", INTERNVL_SYSTEM_V2, "", True),
    # InternVL 1.2+ / 2 with Nous-Hermes / Yi / Qwen LLMs: chatml, no BOS.
    "Hermes-2": _chatml("Hermes-2", INTERNVL_SYSTEM_V2, "", False),
    # InternVL-Chat-V1-1 style (Vicuna / LLaVA): the answer's leading space belongs to the answer tokens.
    "vicuna_v1": ChatTemplate(
        name="vicuna_v1", system_prefix="", system_suffix=" ", user_header="USER: ", user_end=" ",
        assistant_header="ASSISTANT:", answer_lead=" ", assistant_end="</s>", assistant_tail="", default_system=VICUNA_SYSTEM,
        add_bos=True, markers=("</s>",)),
}
TOKENIZER_TEMPLATE = "tokenizer"
TEMPLATE_NAMES = (*TEMPLATES, TOKENIZER_TEMPLATE)


class TemplateMismatch(Exception):
    """The template cannot be rendered or tokenised faithfully for this sample (reason = counter key)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def render_with_chat_template(apply: Callable[[list[dict[str, Any]]], str], turns: list[tuple[str, str]],
                              system: Optional[str]) -> list[Piece]:
    """Render with a tokenizer chat template by prefix differences.

    `apply(messages)` returns the rendered text of a message list. Each turn's text is what it adds to the
    rendering of the turns before it; an assistant turn's supervised part is its content plus whatever the
    template puts after it up to trailing whitespace (its end marker)."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system is not None else []
    previous = apply(messages) if messages else ""
    pieces = [Piece(previous, False, -1)] if previous else []
    for i, (role, text) in enumerate(turns):
        messages.append({"role": "user" if role == "human" else "assistant", "content": text})
        rendered = apply(messages)
        if not rendered.startswith(previous):
            raise TemplateMismatch("chat_template_not_prefix", f"turn {i} rewrites earlier turns")
        added, previous = rendered[len(previous):], rendered
        if role == "human":
            pieces.append(Piece(added, False, i // 2))
            continue
        at = added.find(text)
        if at < 0 or not text:
            raise TemplateMismatch("chat_template_content_missing", f"assistant turn {i} content not rendered verbatim")
        tail = added[at + len(text):]
        marker = tail.rstrip()
        pieces.append(Piece(added[:at], False, i // 2))
        pieces.append(Piece(text + marker, True, i // 2))
        pieces.append(Piece(tail[len(marker):], False, i // 2))
    return [p for p in pieces if p.text]


# The Jinja twin of ChatTemplate.render for exports (`tokenizer.apply_chat_template`). Image content items
# become the processor's image token, numbered `Image-k:` lines when the conversation has several (as
# place_image_tokens prefixes them); a `<image>` placeholder in text becomes the image token too.
_JINJA_BODY = """\
{%- set ns = namespace(images=0, seen=0, system=default_system) -%}
{%- for message in messages if message.content is not string -%}
  {%- set ns.images = ns.images + message.content | selectattr("type", "equalto", "image") | list | length -%}
{%- endfor -%}
{%- set turns = messages -%}
{%- if messages and messages[0].role == "system" -%}
  {%- set turns = messages[1:] -%}
  {%- if messages[0].content is string -%}{%- set ns.system = messages[0].content -%}
  {%- else -%}{%- set ns.system = messages[0].content | map(attribute="text") | join("") -%}{%- endif -%}
{%- endif -%}
{{- bos + system_prefix + ns.system + system_suffix -}}
{%- for message in turns -%}
  {%- if message.role == "user" -%}{{- user_header -}}
  {%- elif message.role == "assistant" -%}{{- assistant_header + answer_lead -}}
  {%- else -%}{{- raise_exception("roles must be system (first), user or assistant, not " ~ message.role) -}}
  {%- endif -%}
  {%- if message.content is string -%}{{- message.content | replace(placeholder, image_token) -}}
  {%- else -%}
    {%- for item in message.content -%}
      {%- if item.type == "text" -%}{{- item.text | replace(placeholder, image_token) -}}
      {%- elif item.type == "image" -%}
        {%- set ns.seen = ns.seen + 1 -%}
        {{- ("Image-" ~ ns.seen ~ ": " if ns.images > 1 else "") + image_token + "\\n" -}}
      {%- else -%}{{- raise_exception("unsupported content type " ~ item.type) -}}
      {%- endif -%}
    {%- endfor -%}
  {%- endif -%}
  {%- if message.role == "user" -%}{{- user_end -}}{%- else -%}{{- assistant_end + assistant_tail -}}{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- assistant_header -}}{%- endif -%}
"""


def jinja_chat_template(template: ChatTemplate, system: Optional[str], bos_token: Optional[str],
                        image_token: str, placeholder: str) -> str:
    """A Jinja chat template rendering exactly what `template.render` does (system = the default system
    message when the conversation has none; bos_token baked in where the encoder adds one), with
    `add_generation_prompt` ending at the assistant header, where the training prompt ends."""
    constants = {
        "bos": bos_token or "", "default_system": template.default_system if system is None else system,
        "system_prefix": template.system_prefix, "system_suffix": template.system_suffix,
        "user_header": template.user_header, "user_end": template.user_end,
        "assistant_header": template.assistant_header, "answer_lead": template.answer_lead,
        "assistant_end": template.assistant_end, "assistant_tail": template.assistant_tail,
        "image_token": image_token, "placeholder": placeholder}
    header = "".join(f"{{%- set {k} = {json.dumps(v, ensure_ascii=False)} -%}}\n" for k, v in constants.items())
    return f"{{#- {template.name} conversation template (internvl-train) -#}}\n" + header + _JINJA_BODY


def with_default_system(chat_template: str, system: str) -> str:
    """A tokenizer's own chat template, given the system message training used when a conversation has none."""
    message = json.dumps({"role": "system", "content": system}, ensure_ascii=False)
    return ("{%- if not messages or messages[0].role != \"system\" -%}"
            f"{{%- set messages = [{message}] + messages -%}}{{%- endif -%}}\n" + chat_template)
