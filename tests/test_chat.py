"""Chat templates: HF-style sandboxed Jinja rendering and the DeepSeek-V2 fallback."""
from __future__ import annotations

import ctypes
import os

import pytest

from minillm.chat import DEEPSEEK_V2_TEMPLATE, ChatTemplateError, render_chat
from minillm.tokenizer import Tokenizer, read_gguf_metadata

VOCAB = os.path.join(os.path.dirname(__file__), "data", "vocab", "ggml-vocab-deepseek-llm.gguf")
BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi!"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "2+2?"},
]


@pytest.fixture(scope="module")
def llm() -> Tokenizer:
    return Tokenizer.from_gguf(VOCAB)


def test_deepseek_v2_fallback_format():
    # The DeepSeek-V2(-Lite)-Chat format as published on the model card.
    text = render_chat(CONVERSATION, bos_token=BOS, eos_token=EOS)
    assert text == (f"{BOS}You are terse.\n\nUser: Hi!\n\nAssistant: Hello.{EOS}"
                    "User: 2+2?\n\nAssistant:")
    no_prompt = render_chat(CONVERSATION[:2], bos_token=BOS, eos_token=EOS, add_generation_prompt=False)
    assert no_prompt == f"{BOS}You are terse.\n\nUser: Hi!\n\n"


def test_unknown_role_rejected_by_fallback():
    with pytest.raises(ChatTemplateError, match="unknown role: tool"):
        render_chat([{"role": "tool", "content": "x"}])


def test_hf_environment_trim_and_lstrip_blocks():
    template = (
        "{% for m in messages %}\n"
        "    {% if m.role == 'user' %}\n"
        "<u>{{ m.content }}</u>\n"
        "    {% else %}\n"
        "<a>{{ m.content }}</a>\n"
        "    {% endif %}\n"
        "{% endfor %}\n"
        "{% if add_generation_prompt %}<a>{% endif %}"
    )
    out = render_chat(CONVERSATION[1:3], template=template)
    assert out == "<u>Hi!</u>\n<a>Hello.</a>\n<a>"


def test_template_helpers():
    template = ("{% for m in messages %}{% if m.role != 'user' %}{{ raise_exception('only users: ' + m.role) }}"
                "{% endif %}{{ m.content | tojson }}{% if loop.index == 1 %}{% break %}{% endif %}{% endfor %}"
                "{{ strftime_now('%Y') | length }}")
    assert render_chat([{"role": "user", "content": "héllo \"x\""}, {"role": "user", "content": "no"}],
                       template=template) == '"héllo \\"x\\""4'
    with pytest.raises(ChatTemplateError, match="only users: assistant"):
        render_chat([{"role": "assistant", "content": "x"}], template=template)


def test_extra_variables_and_namespace():
    template = ("{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}"
                "{{ ns.n }} {{ bos_token }}{{ eos_token }} {{ tools | length }}")
    assert render_chat(CONVERSATION, template=template, bos_token="B", eos_token="E", tools=[1, 2]) == "4 BE 2"


@pytest.mark.parametrize("template", [
    "{{ messages.append({'role': 'x', 'content': 'y'}) }}",           # mutation: immutable sandbox
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",                  # reaching Python internals
    "{{ cycler.__init__.__globals__.os }}",
])
def test_sandbox_blocks_unsafe_templates(template):
    with pytest.raises(ChatTemplateError):
        render_chat(CONVERSATION, template=template)


def test_bad_templates_and_messages():
    with pytest.raises(ChatTemplateError, match="does not compile"):
        render_chat(CONVERSATION, template="{% for %}")
    with pytest.raises(TypeError):
        render_chat("hello")
    with pytest.raises(ValueError, match="message 0"):
        render_chat([{"content": "no role"}])


def test_tokenizer_uses_fallback_and_encodes_one_bos(llm):
    assert llm.chat_template is None
    prompt = llm.apply_chat_template(CONVERSATION)
    assert prompt == render_chat(CONVERSATION, bos_token=BOS, eos_token=EOS)
    ids = llm.encode_chat(CONVERSATION)
    assert ids[0] == llm.bos_id and ids.count(llm.bos_id) == 1
    assert ids.count(llm.eos_id) == 1  # the assistant turn's end marker, parsed as the control token
    assert llm.detokenize(ids, special=True) == prompt
    assert ids == [llm.bos_id] + llm.tokenize(prompt[len(BOS):], add_bos=False, special=True)


def test_tokenizer_uses_the_file_template():
    meta = read_gguf_metadata(VOCAB.replace("deepseek-llm", "deepseek-coder"))  # same BOS text, smaller
    template = "{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}"
    tok = Tokenizer.from_metadata({**meta, "tokenizer.chat_template": template})
    assert tok.apply_chat_template(CONVERSATION[1:2]) == f"{BOS}[user]Hi!"
    assert tok.encode_chat(CONVERSATION[1:2])[0] == tok.bos_id
    # a template without BOS still gets one, as the file asks (add_bos_token)
    tok2 = Tokenizer.from_metadata({**meta, "tokenizer.chat_template": "{{ messages[0].content }}"})
    assert tok2.encode_chat(CONVERSATION[1:2]) == tok2.tokenize("Hi!")


def test_fallback_template_is_valid_jinja_text():
    assert "Assistant:" in DEEPSEEK_V2_TEMPLATE


@pytest.mark.peer
def test_fallback_matches_llama_cpp_deepseek2():
    """llama.cpp's built-in 'deepseek2' chat format (no BOS: llama.cpp adds it when tokenizing)."""
    api = pytest.importorskip("ik_llama_cpp._ctypes_api")

    class Msg(ctypes.Structure):
        _fields_ = [("role", ctypes.c_char_p), ("content", ctypes.c_char_p)]

    fn = api._lib.llama_chat_apply_template
    fn.argtypes = [ctypes.c_char_p, ctypes.POINTER(Msg), ctypes.c_size_t, ctypes.c_bool, ctypes.c_char_p,
                   ctypes.c_int32]
    fn.restype = ctypes.c_int32
    for convo in (CONVERSATION, CONVERSATION[1:], CONVERSATION[1:3]):
        for add_ass in (True, False):
            msgs = (Msg * len(convo))(*[Msg(m["role"].encode(), m["content"].encode()) for m in convo])
            buf = ctypes.create_string_buffer(4096)
            n = fn(b"deepseek2", msgs, len(convo), add_ass, buf, len(buf))
            assert 0 < n < len(buf)
            theirs = buf.raw[:n].decode()
            ours = render_chat(convo, add_generation_prompt=add_ass, bos_token="", eos_token=EOS)
            assert ours == theirs
