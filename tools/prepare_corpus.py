"""The default model's training text and tokenizer.

Corpus: the reStructuredText sources of the Python 3.11 documentation as Debian's
``python3.11-doc`` package installs them (``/usr/share/doc/python3.11/html/_sources``;
PSF licence, see the package's ``copyright`` file).  Preparation, exactly:

1. ``apt-get download python3.11-doc`` and ``dpkg-deb -x`` it (or ``--sources DIR``);
2. take every ``*.rst.txt`` file under ``_sources``, sorted by relative path, minus
   ``whatsnew/changelog.rst.txt`` (a list of issue numbers, not prose);
3. read each as UTF-8, strip trailing whitespace from every line and the file's
   leading/trailing blank lines, and join the files with one blank line;
4. every 20th file of the sorted list (index 10, 30, 50, ...) goes to ``test.txt``,
   the rest to ``train.txt``: the held-out text is whole documents training never sees.

Tokenizer: a byte-level BPE trained with HF ``tokenizers`` on ``train.txt`` only,
pre-tokenized by llama.cpp's ``deepseek-llm`` rules (:data:`minillm.pretokenize.PRE_TOKENIZER_SPLITS`),
so that llama.cpp, ik_llama.cpp and minillm, which all implement those rules, cut text
into the same words.  Special tokens: ``<｜begin▁of▁sentence｜>`` and
``<｜end▁of▁sentence｜>`` as in the DeepSeek vocabularies.

Usage: python tools/prepare_corpus.py OUT_DIR [--sources DIR] [--vocab-size 4096]
writes OUT_DIR/train.txt, OUT_DIR/test.txt, OUT_DIR/tokenizer.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
SOURCES_IN_DEB = "usr/share/doc/python3.11/html/_sources"
EXCLUDED = {"whatsnew/changelog.rst.txt"}
TEST_EVERY, TEST_OFFSET = 20, 10


def fetch_sources(workdir: Path) -> Path:
    """Download and unpack python3.11-doc; return its _sources folder."""
    subprocess.run(["apt-get", "download", "python3.11-doc"], cwd=workdir, check=True)
    deb = next(workdir.glob("python3.11-doc_*.deb"))
    subprocess.run(["dpkg-deb", "-x", str(deb), str(workdir / "deb")], check=True)
    return workdir / "deb" / SOURCES_IN_DEB


def clean(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.splitlines()).strip("\n")


def split_corpus(sources: Path) -> tuple[str, str]:
    files = sorted(p.relative_to(sources).as_posix() for p in sources.rglob("*.rst.txt"))
    files = [f for f in files if f not in EXCLUDED]
    if not files:
        raise SystemExit(f"no *.rst.txt files under {sources}")
    train, test = [], []
    for i, name in enumerate(files):
        doc = clean((sources / name).read_text(encoding="utf-8"))
        (test if i % TEST_EVERY == TEST_OFFSET else train).append(doc)
    return "\n\n".join(train) + "\n", "\n\n".join(test) + "\n"


def train_tokenizer(train_file: Path, vocab_size: int):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from minillm.pretokenize import PRE_TOKENIZER_SPLITS

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(p), behavior="isolated") for p in PRE_TOKENIZER_SPLITS["deepseek-llm"]]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS, EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train([str(train_file)], trainer)
    return tok


# DeepSeek-V2-Chat's prompt format ("User: ...\n\nAssistant: ..."); llama.cpp recognizes it
# as its "deepseek2" template.  The model is a plain language model, not chat-tuned.
CHAT_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'Assistant: ' + message['content'] + eos_token }}"
    "{% elif message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")


def vocab_fields(tokenizer_json: Path) -> list[tuple]:
    """The tokenizer.* GGUF fields of a trained tokenizer, stored the way llama.cpp's
    converter stores a BPE vocabulary: model gpt2, pre deepseek-llm, byte-level token
    strings by id, merges as "a b", token types (1 normal, 3 control), BOS/EOS."""
    from gguf import GGUFValueType as V
    model = json.loads(Path(tokenizer_json).read_text(encoding="utf-8"))["model"]
    vocab = model["vocab"]
    tokens = [None] * len(vocab)
    for text, i in vocab.items():
        tokens[i] = text
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    control = {BOS, EOS}
    types = [3 if t in control else 1 for t in tokens]
    return [("tokenizer.ggml.model", "gpt2", V.STRING, None),
            ("tokenizer.ggml.pre", "deepseek-llm", V.STRING, None),
            ("tokenizer.ggml.tokens", tokens, V.ARRAY, V.STRING),
            ("tokenizer.ggml.token_type", types, V.ARRAY, V.INT32),
            ("tokenizer.ggml.merges", merges, V.ARRAY, V.STRING),
            ("tokenizer.ggml.bos_token_id", vocab[BOS], V.UINT32, None),
            ("tokenizer.ggml.eos_token_id", vocab[EOS], V.UINT32, None),
            ("tokenizer.ggml.padding_token_id", vocab[EOS], V.UINT32, None),
            ("tokenizer.ggml.add_bos_token", True, V.BOOL, None),
            ("tokenizer.ggml.add_eos_token", False, V.BOOL, None),
            ("tokenizer.chat_template", CHAT_TEMPLATE, V.STRING, None)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--sources", type=Path, help="an unpacked _sources folder (default: download the package)")
    ap.add_argument("--vocab-size", type=int, default=4096)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        sources = args.sources or fetch_sources(Path(tmp))
        train, test = split_corpus(sources)
    (args.out / "train.txt").write_text(train, encoding="utf-8")
    (args.out / "test.txt").write_text(test, encoding="utf-8")
    tok = train_tokenizer(args.out / "train.txt", args.vocab_size)
    tok.save(str(args.out / "tokenizer.json"))
    n_train = len(tok.encode(train).ids)
    n_test = len(tok.encode(test).ids)
    print(f"train.txt {len(train.encode()):,} bytes, {n_train:,} tokens; test.txt {len(test.encode()):,} bytes, "
          f"{n_test:,} tokens; vocabulary {tok.get_vocab_size()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
