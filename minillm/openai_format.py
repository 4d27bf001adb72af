"""OpenAI's completion and chat-completion API on the engine: request arguments in
(llama.cpp's names and defaults for what OpenAI lacks), OpenAI-shaped dicts out, or chunks
when streaming.  Shared by ``Model.create_completion`` / ``create_chat_completion`` and the
server, so both give the same text for the same request."""
from __future__ import annotations

import time
import uuid
from typing import Callable, Iterator, Optional

from .completion import Job, Outcome, Piece, check_logprobs, check_stop, fit_max_tokens, run
from .sampling import SamplingParams

# OpenAI's fields that steer sampling, with llama-server's defaults
SAMPLING_DEFAULTS = dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.0,
                         repeat_last_n=64, presence_penalty=0.0, frequency_penalty=0.0, seed=None)
CHAT_ROLES = {"system", "user", "assistant", "developer"}


def _sampling(model, logit_bias, options: dict) -> SamplingParams:
    unknown = set(options) - set(SAMPLING_DEFAULTS)
    if unknown:
        raise TypeError(f"unexpected argument(s): {', '.join(sorted(unknown))}")
    values = {k: (SAMPLING_DEFAULTS[k] if options.get(k) is None else options[k]) for k in SAMPLING_DEFAULTS}
    bias = {}
    if logit_bias is not None:
        if not isinstance(logit_bias, dict):
            raise ValueError("logit_bias must map token ids to biases")
        for key, value in logit_bias.items():
            try:
                tid = int(key)
            except (TypeError, ValueError):
                raise ValueError(f"logit_bias: {key!r} is not a token id") from None
            bias[tid] = value
    return SamplingParams(**values, logit_bias=bias).check(model.config.n_vocab)


def _constraint(model, response_format, grammar, json_schema):
    from . import grammar as grammars

    text = grammars.grammar_for(response_format, grammar, json_schema)
    return grammars.Constraint(model.tokenizer, text) if text is not None else None


def _one_choice(n, best_of) -> None:
    if n not in (None, 1) or best_of not in (None, 1):
        raise ValueError("only one choice per request is supported (n = 1, best_of = 1)")


def _prompt_ids(model, prompt) -> tuple[list[int], str]:
    """A completion prompt: text, token ids, or a list holding one of those."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        ids = model.tokenize(prompt, add_bos=True)
        text = prompt
    elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        if not all(0 <= t < model.config.n_vocab for t in prompt):
            raise ValueError(f"prompt token ids must be in [0, {model.config.n_vocab})")
        ids, text = list(prompt), model.detokenize(prompt)
    else:
        raise ValueError("prompt must be a string, a list of token ids, or a list holding one of them")
    if not ids:
        raise ValueError("the prompt is empty")
    return ids, text


def prepare_completion(model, prompt, *, max_tokens: Optional[int] = 16, stop=None, logprobs=None,
                       echo: bool = False, logit_bias=None, response_format=None, grammar=None, json_schema=None,
                       n=None, best_of=None, suffix=None, **sampling) -> Job:
    """A validated completion :class:`Job` (ValueError / TypeError on bad arguments)."""
    _one_choice(n, best_of)
    if suffix:
        raise ValueError("suffix (insertion) is not supported")
    ids, text = _prompt_ids(model, prompt)
    return Job(ids, fit_max_tokens(len(ids), max_tokens, model.n_ctx), _sampling(model, logit_bias, sampling),
               check_stop(stop), check_logprobs(logprobs), _constraint(model, response_format, grammar, json_schema),
               echo_text=text if echo else "")


def _message_text(i: int, message) -> dict:
    if not isinstance(message, dict):
        raise ValueError(f"messages[{i}] must be an object")
    role, content = message.get("role"), message.get("content")
    if role not in CHAT_ROLES:
        raise ValueError(f"messages[{i}].role must be one of {', '.join(sorted(CHAT_ROLES))}, not {role!r}")
    if content is None and role == "assistant":
        content = ""
    if isinstance(content, list):         # content parts: only text is understood
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError(f"messages[{i}].content: only text parts are supported")
            parts.append(part["text"])
        content = "".join(parts)
    if not isinstance(content, str):
        raise ValueError(f"messages[{i}].content must be a string or a list of text parts")
    return {"role": "system" if role == "developer" else role, "content": content}


def prepare_chat(model, messages, *, max_tokens: Optional[int] = None, max_completion_tokens: Optional[int] = None,
                 stop=None, logprobs: bool = False, top_logprobs: Optional[int] = None, logit_bias=None,
                 response_format=None, grammar=None, json_schema=None, n=None, **sampling) -> Job:
    """A validated chat :class:`Job`: the messages rendered with the model's chat template."""
    _one_choice(n, None)
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list")
    msgs = [_message_text(i, m) for i, m in enumerate(messages)]
    ids = model.tokenizer.encode_chat(msgs, add_generation_prompt=True)
    if max_tokens is not None and max_completion_tokens is not None:
        raise ValueError("give max_tokens or max_completion_tokens, not both")
    limit = max_completion_tokens if max_completion_tokens is not None else max_tokens
    if not isinstance(logprobs, bool):
        raise ValueError("logprobs must be true or false")
    if top_logprobs is not None and not logprobs:
        raise ValueError("top_logprobs needs logprobs: true")
    return Job(ids, fit_max_tokens(len(ids), limit, model.n_ctx), _sampling(model, logit_bias, sampling),
               check_stop(stop), check_logprobs(top_logprobs or 0) if logprobs else None,
               _constraint(model, response_format, grammar, json_schema))


# -- output --------------------------------------------------------------------------

class _Logprobs:
    """Per-token log-probabilities in the completion (``tokens`` / ``token_logprobs`` /
    ``top_logprobs`` / ``text_offset``) or the chat (``content``) layout."""

    def __init__(self, tok, chat: bool, offset: int):
        self.tok, self.chat, self.offset = tok, chat, offset
        self.entries: list = []

    def _token(self, tid: int) -> tuple[str, list[int]]:
        b = self.tok.token_to_piece(tid)
        return b.decode("utf-8", errors="replace"), list(b)

    def add(self, piece: Piece) -> None:
        if piece.logprob is None or piece.token < 0:
            return
        text, raw = self._token(piece.token)
        if self.chat:
            top = [dict(zip(("token", "bytes"), self._token(t)), logprob=lp) for t, lp in piece.top_logprobs]
            self.entries.append({"token": text, "logprob": piece.logprob, "bytes": raw, "top_logprobs": top})
        else:
            self.entries.append((text, piece.logprob, {self._token(t)[0]: lp for t, lp in piece.top_logprobs},
                                 self.offset))
        self.offset += len(piece.text)

    def take(self) -> Optional[dict]:
        """The entries added since the last take, in the API's layout."""
        entries, self.entries = self.entries, []
        if self.chat:
            return {"content": entries, "refusal": None}
        return {"tokens": [e[0] for e in entries], "token_logprobs": [e[1] for e in entries],
                "top_logprobs": [e[2] for e in entries], "text_offset": [e[3] for e in entries]}


def respond(model, job: Job, *, chat: bool, stream: bool, model_name: str, outcome: Optional[Outcome] = None,
            cancelled: Callable[[], bool] = lambda: False, include_usage: bool = False):
    """Run ``job`` and return the OpenAI response dict, or an iterator of chunk dicts when
    ``stream``.  ``outcome`` (optional) receives the counts and timings."""
    outcome = outcome if outcome is not None else Outcome()
    chunks = _chunks(model, job, chat, model_name, outcome, cancelled, include_usage)
    return chunks if stream else _collect(chunks, chat, outcome)


def _chunks(model, job: Job, chat: bool, model_name: str, outcome: Outcome, cancelled, include_usage: bool
            ) -> Iterator[dict]:
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
    created = int(time.time())
    logprobs = _Logprobs(model.tokenizer, chat, len(job.echo_text)) if job.logprobs is not None else None

    def chunk(text: Optional[str], finish: Optional[str] = None, role: bool = False) -> dict:
        lp = logprobs.take() if logprobs is not None else None
        if chat:
            delta = {"role": "assistant", "content": text} if role else ({"content": text} if text else {})
            choice = {"index": 0, "delta": delta, "logprobs": lp, "finish_reason": finish}
        else:
            choice = {"text": text or "", "index": 0, "logprobs": lp, "finish_reason": finish}
        return {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion", "created": created,
                "model": model_name, "system_fingerprint": "minillm", "choices": [choice]}

    if chat:
        yield chunk("", role=True)
    elif job.echo_text:
        yield chunk(job.echo_text)
    for piece in run(model, job, outcome, cancelled):
        if logprobs is not None:
            logprobs.add(piece)
        if piece.text:
            yield chunk(piece.text)
    if outcome.cancelled:
        return
    last = chunk(None, outcome.finish_reason)
    if include_usage:
        yield last
        last = {**last, "choices": [], "usage": outcome.usage()}
    yield last


def _collect(chunks: Iterator[dict], chat: bool, outcome: Outcome) -> dict:
    """The non-streaming response: the chunks joined."""
    texts, entries, head = [], [], None
    for c in chunks:
        head = c
        choice = c["choices"][0]
        texts.append((choice["delta"].get("content") if chat else choice["text"]) or "")
        if choice["logprobs"] is not None:
            entries.append(choice["logprobs"])
    text = "".join(texts)
    logprobs = None
    if entries:
        if chat:
            logprobs = {"content": [e for x in entries for e in x["content"]], "refusal": None}
        else:
            logprobs = {k: [v for x in entries for v in x[k]] for k in entries[0]}
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
                  "finish_reason": outcome.finish_reason}
    else:
        choice = {"text": text, "index": 0, "logprobs": logprobs, "finish_reason": outcome.finish_reason}
    return {"id": head["id"], "object": "chat.completion" if chat else "text_completion", "created": head["created"],
            "model": head["model"], "system_fingerprint": "minillm", "choices": [choice], "usage": outcome.usage(),
            "timings": outcome.timings()}
