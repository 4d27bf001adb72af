"""Train minillm's default model: a small DeepSeek2 (MLA + MoE) on the Python docs.

The model is DeepSeek-V2's architecture scaled down, nothing simplified away: MLA with
a compressed query (q_lora), a compressed KV latent (kv_lora) and a decoupled RoPE part,
YaRN RoPE scaling with DeepSeek's mscale, one leading dense layer, then MoE layers with
shared experts and softmax top-k routing, trained with an expert-level load-balancing
loss.  (It has a q_lora like V2 rather than V2-Lite's plain ``attn_q``: llama.cpp and
ik_llama.cpp only accept a file without q_lora when it has 26 or 27 layers.)

The forward pass follows :mod:`minillm.reference` equation for equation and takes its
RoPE tables and attention scale from it, so the exported GGUF means exactly what was
trained.  Deterministic given the seed: batch ``i`` is drawn from a generator seeded
with (seed, i), so a run resumed from a checkpoint sees the batches the uninterrupted
run would have seen.

Usage::

    python tools/prepare_corpus.py corpus/                  # text and tokenizer
    python tools/train_model.py train corpus/ run/ [--steps N]   # resumes from run/ckpt.pt
    python tools/train_model.py export corpus/ run/ model-f16.gguf [--mixture f32]
    python tools/train_model.py imatrix corpus/ run/ imatrix.gguf [--chunks 64]
    python tools/train_model.py release corpus/ run/ out/    # all of models.md's files

Needs ``pip install .[train]`` (torch); never a runtime dependency of minillm.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from minillm.config import DeepSeek2Config
from minillm.reference import deepseek2_kq_scale, deepseek2_rope_params, rope_cos_sin

# The default model: DeepSeek-V2's layout at a size two CPU cores train in about an hour.
# Head dims keep MLA's proportions (kv_lora 128 = 2 x nope, rope half of nope); widths are
# multiples of 256 where IQ1_S needs whole 256-blocks.
MODEL = dict(
    name="minillm-docs (DeepSeek2, trained on the Python 3.11 docs)",
    n_vocab=4096, n_embd=256, n_layer=5, n_head=4,
    q_lora_rank=128, kv_lora_rank=128, qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64,
    n_ff=512, n_layer_dense_lead=1,
    n_expert=8, n_expert_used=2, n_expert_shared=2, n_ff_exp=64,
    expert_gating_func=1, expert_weights_scale=1.0, expert_weights_norm=False,
    expert_group_count=0, expert_group_used_count=0,
    rope_freq_base=10000.0, rope_scaling_factor=4.0, rope_orig_ctx=512, rope_yarn_log_mul=0.0707,
    rms_eps=1e-6, context_length=2048,
)


@dataclass
class TrainConfig:
    n_ctx: int = 512
    batch: int = 16
    steps: int = 1500
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.1
    balance_coef: float = 0.01     # expert-level load-balancing loss per MoE layer (1.0 when uniform)
    grad_clip: float = 1.0
    seed: int = 0
    threads: int = 2
    checkpoint_every: int = 100
    bf16: int = 1                  # bf16 autocast for the matmuls (fp32 master weights); 0: fp32


def deepseek2_config(c: dict) -> DeepSeek2Config:
    """The runtime's view of a model dict (what its GGUF metadata will say)."""
    return DeepSeek2Config(
        n_vocab=c["n_vocab"], n_embd=c["n_embd"], n_layer=c["n_layer"], n_head=c["n_head"],
        n_head_kv=c["n_head"], n_ctx_train=c["context_length"], n_ff=c["n_ff"], rms_eps=c["rms_eps"],
        q_lora_rank=c["q_lora_rank"], kv_lora_rank=c["kv_lora_rank"], qk_nope_head_dim=c["qk_nope_head_dim"],
        qk_rope_head_dim=c["qk_rope_head_dim"], v_head_dim=c["v_head_dim"], n_expert=c["n_expert"],
        n_expert_used=c["n_expert_used"], n_expert_shared=c["n_expert_shared"], n_ff_exp=c["n_ff_exp"],
        n_layer_dense_lead=c["n_layer_dense_lead"], expert_weights_scale=c["expert_weights_scale"],
        expert_weights_norm=c["expert_weights_norm"], expert_gating_func=c["expert_gating_func"],
        expert_group_count=0, expert_group_used_count=0, rope_freq_base=c["rope_freq_base"],
        rope_scaling_type="yarn", rope_scaling_factor=c["rope_scaling_factor"],
        rope_orig_ctx=c["rope_orig_ctx"], rope_yarn_log_mul=c["rope_yarn_log_mul"])


# ----------------------------------------------------------------------------------------
# model
# ----------------------------------------------------------------------------------------

class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def linear(n_in: int, n_out: int) -> nn.Linear:
    return nn.Linear(n_in, n_out, bias=False)


def apply_rope(x, cos, sin):
    """Rotate adjacent pairs (x[2i], x[2i+1]) of the last axis, as ggml's deepseek2 rope does.
    x: [B, T, ..., d]; cos/sin: [T, d/2] broadcast over the middle axes."""
    shape = (1, cos.shape[0]) + (1,) * (x.dim() - 3) + (cos.shape[1],)
    c, s = cos.view(shape), sin.view(shape)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x0 * c - x1 * s, x0 * s + x1 * c], dim=-1).flatten(-2)


class Attention(nn.Module):
    """Multi-head latent attention in its training (decompressed) form."""

    def __init__(self, c: DeepSeek2Config):
        super().__init__()
        self.c = c
        H, E = c.n_head, c.n_embd
        self.attn_q_a = linear(E, c.q_lora_rank)
        self.attn_q_a_norm = RMSNorm(c.q_lora_rank, c.rms_eps)
        self.attn_q_b = linear(c.q_lora_rank, H * c.qk_head_dim)
        self.attn_kv_a_mqa = linear(E, c.kv_lora_rank + c.qk_rope_head_dim)
        self.attn_kv_a_norm = RMSNorm(c.kv_lora_rank, c.rms_eps)
        self.attn_kv_b = linear(c.kv_lora_rank, H * (c.qk_nope_head_dim + c.v_head_dim))
        self.attn_output = linear(H * c.v_head_dim, E)
        self.kq_scale = deepseek2_kq_scale(c)
        self.record = None            # imatrix collection: record(name, input rows)

    def forward(self, x, cos, sin):
        c = self.c
        B, T, _ = x.shape
        H, nope, R, rope = c.n_head, c.qk_nope_head_dim, c.kv_lora_rank, c.qk_rope_head_dim
        q = self.attn_q_b(self.attn_q_a_norm(self.attn_q_a(x))).view(B, T, H, nope + rope)
        kv_a = self.attn_kv_a_mqa(x)
        latent = self.attn_kv_a_norm(kv_a[..., :R])                    # c_kv: what MLA caches
        k_pe = apply_rope(kv_a[..., R:], cos, sin)                      # [B, T, rope], shared by heads
        q_pe = apply_rope(q[..., nope:], cos, sin)
        kv = self.attn_kv_b(latent).view(B, T, H, nope + c.v_head_dim)  # per head: [k_nope | v]
        k = torch.cat([kv[..., :nope], k_pe[:, :, None, :].expand(B, T, H, rope)], dim=-1)
        q = torch.cat([q[..., :nope], q_pe], dim=-1)
        # V zero-padded to the key width: torch's fused CPU attention needs equal widths
        # (twice as fast as its fallback); the padding columns of the output are dropped.
        v = F.pad(kv[..., nope:], (0, nope + rope - c.v_head_dim))
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           is_causal=True, scale=self.kq_scale)[..., :c.v_head_dim]
        if self.record is not None:   # inputs of attn_k_b (q_nope) and attn_v_b (attention over the latent)
            scores = (q.transpose(1, 2) @ k.permute(0, 2, 3, 1)) * self.kq_scale
            scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
            latent_out = torch.softmax(scores, -1) @ latent[:, None]            # [B, H, T, R]
            self.record("attn_k_b", q[..., :nope].reshape(-1, nope))
            self.record("attn_v_b", latent_out.reshape(-1, R))
        return self.attn_output(o.transpose(1, 2).reshape(B, T, H * c.v_head_dim))


class FeedForward(nn.Module):
    def __init__(self, n_embd: int, n_ff: int, suffix: str = ""):
        super().__init__()
        self.suffix = suffix
        self.gate, self.up, self.down = linear(n_embd, n_ff), linear(n_embd, n_ff), linear(n_ff, n_embd)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class MoE(nn.Module):
    """Softmax top-k routing over routed experts, plus always-on shared experts."""

    def __init__(self, c: DeepSeek2Config):
        super().__init__()
        self.c = c
        X, E, Fe = c.n_expert, c.n_embd, c.n_ff_exp
        self.ffn_gate_inp = linear(E, X)
        # numpy/GGUF order: [expert, out, in]
        self.ffn_gate_exps = nn.Parameter(torch.empty(X, Fe, E))
        self.ffn_up_exps = nn.Parameter(torch.empty(X, Fe, E))
        self.ffn_down_exps = nn.Parameter(torch.empty(X, E, Fe))
        self.shared = FeedForward(E, Fe * c.n_expert_shared)
        self.record = None            # imatrix collection: record(name, input rows, expert)

    def forward(self, x):
        """Returns the output and the load-balancing loss sum_e f_e P_e (f_e: share of the
        top-k choices that went to e, times n_expert; P_e: mean routing probability)."""
        c = self.c
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        probs = F.softmax(self.ffn_gate_inp(x), dim=-1)
        weights, experts = probs.topk(c.n_expert_used, dim=-1)
        weights = weights * c.expert_weights_scale
        out = self.shared(x)
        counts = torch.zeros(c.n_expert, device=x.device)
        for e in range(c.n_expert):
            rows, slot = torch.nonzero(experts == e, as_tuple=True)
            counts[e] = rows.numel()
            if rows.numel() == 0:
                continue
            h = x[rows]
            act = F.silu(h @ self.ffn_gate_exps[e].T) * (h @ self.ffn_up_exps[e].T)
            y = act @ self.ffn_down_exps[e].T
            if self.record is not None:
                self.record("ffn_gate_exps", h, e)
                self.record("ffn_up_exps", h, e)
                self.record("ffn_down_exps", act, e)
            out = out.index_add(0, rows, y * weights[rows, slot, None])
        f = counts * c.n_expert / (x.shape[0] * c.n_expert_used)
        balance = (f * probs.mean(0)).sum()
        return out.view(shape), balance


class Block(nn.Module):
    def __init__(self, c: DeepSeek2Config, layer: int):
        super().__init__()
        self.attn_norm = RMSNorm(c.n_embd, c.rms_eps)
        self.attn = Attention(c)
        self.ffn_norm = RMSNorm(c.n_embd, c.rms_eps)
        self.moe = c.is_moe_layer(layer)
        self.ffn = MoE(c) if self.moe else FeedForward(c.n_embd, c.n_ff)

    def forward(self, x, cos, sin):
        x = x + self.attn(self.attn_norm(x), cos, sin)
        if self.moe:
            y, balance = self.ffn(self.ffn_norm(x))
        else:
            y, balance = self.ffn(self.ffn_norm(x)), x.new_zeros(())
        return x + y, balance


class DeepSeek2(nn.Module):
    def __init__(self, c: DeepSeek2Config, n_ctx: int):
        super().__init__()
        self.c = c
        self.n_ctx = n_ctx
        self.token_embd = nn.Embedding(c.n_vocab, c.n_embd)
        self.blocks = nn.ModuleList(Block(c, i) for i in range(c.n_layer))
        self.output_norm = RMSNorm(c.n_embd, c.rms_eps)
        self.output = linear(c.n_embd, c.n_vocab)
        cos, sin = rope_cos_sin(np.arange(n_ctx), deepseek2_rope_params(c))
        self.register_buffer("cos", torch.from_numpy(cos), persistent=False)
        self.register_buffer("sin", torch.from_numpy(sin), persistent=False)

    def init_weights(self, generator: torch.Generator) -> None:
        """GPT-2's scheme: N(0, 0.02), residual output projections scaled by 1/sqrt(2 n_layer)."""
        out_std = 0.02 / math.sqrt(2 * self.c.n_layer)
        for name, p in self.named_parameters():
            if p.dim() == 1:
                continue          # norms stay 1
            small = name.endswith(("attn_output.weight", "down.weight", "ffn_down_exps"))
            std = out_std if small else 0.02
            if name.endswith("ffn_gate_inp.weight"):   # router logits of std ~1: token-dependent choices from step 0
                std = 1.0 / math.sqrt(p.shape[1])
            nn.init.normal_(p, 0.0, std, generator=generator)

    def forward(self, ids):
        T = ids.shape[1]
        cos, sin = self.cos[:T], self.sin[:T]
        x = self.token_embd(ids)
        balance = x.new_zeros(())
        for block in self.blocks:
            x, b = block(x, cos, sin)
            balance = balance + b
        n_moe = sum(b.moe for b in self.blocks)
        return self.output(self.output_norm(x)), balance / max(1, n_moe)


# ----------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------

def load_tokens(corpus: Path, split: str) -> np.ndarray:
    """The split's token ids (no BOS), cached next to the text as .npy."""
    cache = corpus / f"{split}.tokens.npy"
    if cache.exists() and cache.stat().st_mtime >= (corpus / f"{split}.txt").stat().st_mtime:
        return np.load(cache)
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(corpus / "tokenizer.json"))
    ids = np.array(tok.encode((corpus / f"{split}.txt").read_text(encoding="utf-8")).ids, dtype=np.int32)
    np.save(cache, ids)
    return ids


def batch_at(tokens: np.ndarray, step: int, tc: TrainConfig, bos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch ``step``: windows [BOS, n_ctx text tokens] at random offsets (llama-perplexity
    scores chunks that start with BOS, so training windows do too)."""
    rng = np.random.default_rng([tc.seed, step])
    starts = rng.integers(0, len(tokens) - tc.n_ctx, size=tc.batch)
    rows = np.stack([tokens[s:s + tc.n_ctx] for s in starts]).astype(np.int64)
    inputs = np.concatenate([np.full((tc.batch, 1), bos), rows[:, :-1]], axis=1)
    return torch.from_numpy(inputs), torch.from_numpy(rows)


# ----------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------

def lr_at(step: int, tc: TrainConfig) -> float:
    if step < tc.warmup:
        return tc.lr * (step + 1) / tc.warmup
    t = (step - tc.warmup) / max(1, tc.steps - tc.warmup)
    return tc.lr * (tc.min_lr_ratio + (1 - tc.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def make_optimizer(model: nn.Module, tc: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=tc.lr, betas=(0.9, 0.95))


def bos_id(corpus: Path) -> int:
    from tokenizers import Tokenizer
    from prepare_corpus import BOS
    return Tokenizer.from_file(str(corpus / "tokenizer.json")).token_to_id(BOS)


def save_checkpoint(path: Path, model, opt, step: int, tc: TrainConfig, spec: dict, log: list) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                "train_config": asdict(tc), "model_config": spec, "log": log}, tmp)
    os.replace(tmp, path)


@torch.no_grad()
def evaluate(model, tokens: np.ndarray, tc: TrainConfig, bos: int, n_chunks: int = 8) -> float:
    """Mean next-token loss over the second halves of the first chunks of ``tokens``."""
    model.eval()
    losses = []
    for i in range(min(n_chunks, len(tokens) // tc.n_ctx)):
        row = torch.from_numpy(tokens[i * tc.n_ctx:(i + 1) * tc.n_ctx].astype(np.int64))[None]
        inputs = torch.cat([torch.tensor([[bos]]), row[:, :-1]], dim=1)
        logits, _ = model(inputs)
        half = tc.n_ctx // 2
        losses.append(F.cross_entropy(logits[0, half:], row[0, half:]).item())
    model.train()
    return float(np.mean(losses))


def train(corpus: Path, run: Path, tc: TrainConfig, spec: dict = MODEL, quiet: bool = False) -> None:
    """Train ``spec`` (a model dict like :data:`MODEL`) until ``tc.steps``, resuming from
    ``run/ckpt.pt`` when it exists; a checkpoint every ``tc.checkpoint_every`` steps."""
    torch.set_num_threads(tc.threads)
    torch.manual_seed(tc.seed)
    run.mkdir(parents=True, exist_ok=True)
    c = deepseek2_config(spec)
    tokens, test_tokens = load_tokens(corpus, "train"), load_tokens(corpus, "test")
    bos = bos_id(corpus)
    model = DeepSeek2(c, tc.n_ctx)
    model.init_weights(torch.Generator().manual_seed(tc.seed))
    opt = make_optimizer(model, tc)
    ckpt, step, log = run / "ckpt.pt", 0, []
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, log = state["step"], state["log"]
        if not quiet:
            print(f"resumed at step {step}", file=sys.stderr)
    n_params = sum(p.numel() for p in model.parameters())
    if not quiet:
        print(f"{n_params / 1e6:.2f} M parameters, {len(tokens):,} training tokens, "
          f"{tc.batch * tc.n_ctx} tokens per step", file=sys.stderr)
    t0 = time.time()
    while step < tc.steps:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, tc)
        inputs, targets = batch_at(tokens, step, tc, bos)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(tc.bf16)):
            logits, balance = model(inputs)
        ce = F.cross_entropy(logits.float().view(-1, c.n_vocab), targets.view(-1))
        loss = ce + tc.balance_coef * balance
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        step += 1
        entry = {"step": step, "loss": round(ce.item(), 4), "balance": round(balance.item(), 4),
                 "lr": lr_at(step - 1, tc), "seconds": round(time.time() - t0, 1)}
        if step % tc.checkpoint_every == 0 or step == tc.steps:
            entry["test_loss"] = round(evaluate(model, test_tokens, tc, bos), 4)
            log.append(entry)
            save_checkpoint(ckpt, model, opt, step, tc, spec, log)
        if not quiet and (step % 10 == 0 or "test_loss" in entry):
            print(json.dumps(entry), file=sys.stderr, flush=True)
    (run / "log.json").write_text(json.dumps(log, indent=1))


# ----------------------------------------------------------------------------------------
# export
# ----------------------------------------------------------------------------------------

def float_tensors(model: DeepSeek2) -> dict[str, np.ndarray]:
    """Every GGUF tensor of the model as float32 numpy arrays in numpy order (reversed ne)."""
    c = model.c
    H, nope, R, v = c.n_head, c.qk_nope_head_dim, c.kv_lora_rank, c.v_head_dim
    a = lambda t: t.detach().float().numpy().copy()  # noqa: E731
    out = {"token_embd.weight": a(model.token_embd.weight), "output_norm.weight": a(model.output_norm.weight),
           "output.weight": a(model.output.weight)}
    for i, b in enumerate(model.blocks):
        p = f"blk.{i}."
        at = b.attn
        out[p + "attn_norm.weight"] = a(b.attn_norm.weight)
        out[p + "ffn_norm.weight"] = a(b.ffn_norm.weight)
        for name in ("attn_q_a", "attn_q_b", "attn_kv_a_mqa", "attn_kv_b", "attn_output"):
            out[p + name + ".weight"] = a(getattr(at, name).weight)
        out[p + "attn_q_a_norm.weight"] = a(at.attn_q_a_norm.weight)
        out[p + "attn_kv_a_norm.weight"] = a(at.attn_kv_a_norm.weight)
        kv_b = out[p + "attn_kv_b.weight"].reshape(H, nope + v, R)
        out[p + "attn_k_b.weight"] = kv_b[:, :nope].transpose(0, 2, 1).reshape(H * R, nope)  # ne [nope, R*H]
        out[p + "attn_v_b.weight"] = kv_b[:, nope:].reshape(H * v, R)                         # ne [R, v*H]
        f = b.ffn
        if b.moe:
            out[p + "ffn_gate_inp.weight"] = a(f.ffn_gate_inp.weight)
            for name in ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"):
                out[p + name + ".weight"] = a(getattr(f, name))
            for name in ("gate", "up", "down"):
                out[p + f"ffn_{name}_shexp.weight"] = a(getattr(f.shared, name).weight)
        else:
            for name in ("gate", "up", "down"):
                out[p + f"ffn_{name}.weight"] = a(getattr(f, name).weight)
    return out


def load_model(run: Path) -> DeepSeek2:
    """The checkpoint's model, in eval mode, with its model dict as ``.spec``."""
    state = torch.load(run / "ckpt.pt", weights_only=False)
    tc = TrainConfig(**state["train_config"])
    model = DeepSeek2(deepseek2_config(state["model_config"]), tc.n_ctx)
    model.load_state_dict(state["model"])
    model.spec = state["model_config"]
    return model.eval()


def export(corpus: Path, run: Path, out: Path, mixture: str = "f16") -> None:
    from minillm.quantize import write_from_floats
    from prepare_corpus import vocab_fields
    model = load_model(run)
    write_from_floats(out, model.spec, float_tensors(model).__getitem__, mixture,
                      vocab_fields(corpus / "tokenizer.json"))


@torch.no_grad()
def collect_imatrix(model: DeepSeek2, tokens: np.ndarray, bos: int, n_chunks: int, n_ctx: int):
    """llama-imatrix's statistics: per weight tensor (per expert), the sum over input rows
    of each input column's square, and the number of rows, from ``n_chunks`` windows of
    [BOS, n_ctx - 1 tokens] of ``tokens``."""
    c = model.c
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, torch.Tensor] = {}

    def add(name: str, rows: torch.Tensor, expert: int = 0, n_mat: int = 1) -> None:
        if name not in sums:
            sums[name] = torch.zeros(n_mat, rows.shape[-1], dtype=torch.float64)
            counts[name] = torch.zeros(n_mat, dtype=torch.float64)
        sums[name][expert] += rows.double().pow(2).sum(0)
        counts[name][expert] += rows.shape[0]

    hooks = []
    for i, block in enumerate(model.blocks):
        p = f"blk.{i}."
        block.attn.record = lambda name, rows, p=p: add(p + name + ".weight", rows)
        if block.moe:
            block.ffn.record = lambda name, rows, e, p=p: add(p + name + ".weight", rows, e, c.n_expert)
    names = {}
    for mname, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            names[mod] = gguf_name(mname)
            hooks.append(mod.register_forward_pre_hook(lambda mod, args: add(names[mod], args[0].reshape(-1, args[0].shape[-1]))))
    try:
        for i in range(n_chunks):
            row = torch.from_numpy(tokens[i * (n_ctx - 1):(i + 1) * (n_ctx - 1)].astype(np.int64))
            model(torch.cat([torch.tensor([bos]), row])[None])
    finally:
        for h in hooks:
            h.remove()
        for block in model.blocks:
            block.attn.record = None
            if block.moe:
                block.ffn.record = None
    return ({k: v.numpy() for k, v in sums.items() if not k.endswith("ffn_gate_inp.weight")},
            {k: v.numpy() for k, v in counts.items() if not k.endswith("ffn_gate_inp.weight")})


def gguf_name(module_name: str) -> str:
    """GGUF tensor name of a Linear: blocks.3.attn.attn_q_a -> blk.3.attn_q_a.weight,
    blocks.1.ffn.shared.up -> blk.1.ffn_up_shexp.weight, blocks.0.ffn.gate -> blk.0.ffn_gate.weight."""
    if module_name == "output":
        return "output.weight"
    parts = module_name.split(".")
    layer, rest = parts[1], parts[2:]
    if rest[0] == "attn":
        base = rest[1]
    elif rest[1] == "shared":
        base = f"ffn_{rest[2]}_shexp"
    elif rest[1] == "ffn_gate_inp":
        base = "ffn_gate_inp"
    else:
        base = f"ffn_{rest[1]}"
    return f"blk.{layer}.{base}.weight"


def imatrix(corpus: Path, run: Path, out: Path, n_chunks: int, n_ctx: int | None = None) -> None:
    """Importance matrix from ``n_chunks`` windows of ``n_ctx`` (default: the training
    context) training tokens."""
    from minillm.quantize import write_imatrix
    torch.set_num_threads(TrainConfig.threads)
    model = load_model(run)
    n_ctx = n_ctx or model.n_ctx
    sums, counts = collect_imatrix(model, load_tokens(corpus, "train"), bos_id(corpus), n_chunks, n_ctx)
    write_imatrix(out, sums, counts, "train.txt", n_chunks, n_ctx)


RELEASE_MIXTURES = ("q8_0", "iq4_nl", "iq1_s")


def release(corpus: Path, run: Path, out: Path, n_chunks: int = 64) -> list[Path]:
    """models.md's files: the F16 export, its importance matrix, and the F16 quantized to
    each of :data:`RELEASE_MIXTURES` (IQ4_NL and IQ1_S weighted by the importance matrix)."""
    from minillm.quantize import quantize_model
    out.mkdir(parents=True, exist_ok=True)
    f16 = out / "minillm-docs-f16.gguf"
    export(corpus, run, f16)
    imatrix(corpus, run, out / "imatrix.gguf", n_chunks)
    files = [f16]
    for mixture in RELEASE_MIXTURES:
        files.append(out / f"minillm-docs-{mixture}.gguf")
        quantize_model(f16, files[-1], mixture, None if mixture == "q8_0" else out / "imatrix.gguf")
    return files


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("corpus", type=Path)
    t.add_argument("run", type=Path)
    for f, v in asdict(TrainConfig()).items():
        t.add_argument("--" + f.replace("_", "-"), type=type(v), default=v)
    e = sub.add_parser("export", help="write the trained weights as a GGUF (F16 by default)")
    e.add_argument("corpus", type=Path)
    e.add_argument("run", type=Path)
    e.add_argument("out", type=Path)
    e.add_argument("--mixture", default="f16")
    m = sub.add_parser("imatrix", help="importance matrix (llama.cpp's GGUF format) from training text")
    m.add_argument("corpus", type=Path)
    m.add_argument("run", type=Path)
    m.add_argument("out", type=Path)
    m.add_argument("--chunks", type=int, default=64)
    r = sub.add_parser("release", help="F16 export, imatrix and the Q8_0/IQ4_NL/IQ1_S files in one folder")
    r.add_argument("corpus", type=Path)
    r.add_argument("run", type=Path)
    r.add_argument("out", type=Path)
    r.add_argument("--chunks", type=int, default=64, help="imatrix chunks")
    args = ap.parse_args(argv)
    if args.cmd == "train":
        tc = TrainConfig(**{f: getattr(args, f) for f in asdict(TrainConfig())})
        train(args.corpus, args.run, tc)
    elif args.cmd == "export":
        export(args.corpus, args.run, args.out, args.mixture)
    elif args.cmd == "imatrix":
        imatrix(args.corpus, args.run, args.out, args.chunks)
    else:
        for path in release(args.corpus, args.run, args.out, args.chunks):
            print(f"{path} {path.stat().st_size / 2**20:.2f} MiB")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    sys.exit(main())
