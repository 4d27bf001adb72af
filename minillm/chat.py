"""Chat prompts: render a GGUF's ``tokenizer.chat_template`` the way HF transformers does.

The template is Jinja2, run in an immutable sandbox (a model file is untrusted
input: a template must not reach Python internals or mutate our objects) with the
environment HF uses: ``trim_blocks`` and ``lstrip_blocks`` on, the ``loopcontrols``
extension, a ``tojson`` filter that keeps non-ASCII text, and the helpers
``raise_exception(msg)`` and ``strftime_now(fmt)``.  Variables: ``messages``,
``add_generation_prompt``, ``bos_token``, ``eos_token`` (plus any extra keyword).

A file without a template gets the DeepSeek-V2 chat format (DeepSeek-V2 /
V2-Lite-Chat, also llama.cpp's "deepseek2")::

    <｜begin▁of▁sentence｜>{system}\\n\\nUser: {user}\\n\\nAssistant: {reply}<｜end▁of▁sentence｜>User: ...\\n\\nAssistant:

(no space after the final "Assistant:").
"""
from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any, Sequence

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment


class ChatTemplateError(ValueError):
    """A chat template failed to compile or render, or rejected the messages."""


# Our own Jinja rendering of the DeepSeek-V2 chat format described above.
DEEPSEEK_V2_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}User: {{ message['content'] }}\n\n"
    "{% elif message['role'] == 'assistant' %}Assistant: {{ message['content'] }}{{ eos_token }}"
    "{% else %}{{ raise_exception('unknown role: ' + message['role']) }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


def _raise_exception(message: str):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(template)
    except jinja2.TemplateError as e:
        raise ChatTemplateError(f"chat template does not compile: {e}") from None


def _check_messages(messages: Sequence[dict]) -> list[dict]:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise TypeError("messages must be a list of {'role': ..., 'content': ...} dicts")
    checked = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"message {i} must be a dict with 'role' and 'content', got {m!r}")
        if not isinstance(m["role"], str):
            raise ValueError(f"message {i}: role must be a string")
        checked.append(dict(m))
    return checked


def render_chat(messages: Sequence[dict], template: str | None = None, add_generation_prompt: bool = True,
                bos_token: str = "", eos_token: str = "", **extra: Any) -> str:
    """Render ``messages`` with ``template`` (the DeepSeek-V2 format when None)."""
    compiled = _compile(template if template else DEEPSEEK_V2_TEMPLATE)
    try:
        return compiled.render(messages=_check_messages(messages), add_generation_prompt=add_generation_prompt,
                               bos_token=bos_token, eos_token=eos_token, **extra)
    except jinja2.TemplateError as e:  # includes raise_exception() and sandbox SecurityError
        raise ChatTemplateError(f"chat template failed: {e}") from None
