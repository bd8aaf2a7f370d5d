"""The model: a decoder-only GPT, configurable enough to compare its design choices (with bidirectional
attention and the mlm objective, the same blocks make an encoder-only masked LM, BERT's kind: no causal mask,
no KV cache, the head predicting masked tokens).

Holds the modules of a GPT-2-style transformer (GPT-2 names throughout: wte, wpe,
h, ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj, ln_f, lm_head), with a choice of
positional encoding (learned | sinusoidal | rope, with its base), norm (layernorm | rmsnorm, with its
epsilon, or none), MLP (gelu | gelu_tanh | swiglu | relu, with its width, or none: attention-only; or a
mixture of experts of them, `MoE`: top-k routing and Switch's load-balancing loss), grouped-query attention (n_kv_head), biases
(all, or on q/k/v only) and a tied or untied head: enough for GPT-2 and LLaMA-family checkpoints to load
by name (`core.pretrained`); an optional KV cache; two attention paths (fused
`scaled_dot_product_attention`, and an explicit one that also returns the attention probabilities of
every layer and head); on the explicit path, an `Intervention` (interpretability's edits: each head's
output and the residual stream entering each block blended with given values), with the residual stream
at every point and each head's output returned.

Deliberately not here: its configuration, parameter counts and FLOPs per token (`core.config`, which
the inference side reads without torch), training loops and optimizers' schedules (`core.train`), tokenization, data,
sampling strategies (`core.sampling`, numpy), export (`core.export`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn as nn
from torch.nn import functional as F

from core import positions
from core.config import ModelConfig, count_parameters, flops_per_token

# A layer's KV cache: (key, value), each (B, n_kv, T_past, hs); n_kv = n_head without grouped-query attention.
KVCache = tuple[torch.Tensor, torch.Tensor]


class BufferedStep(NamedTuple):
    """What every layer needs to know of a call on CacheBuffers: its shape (the residual stream is then
    two-dimensional, (B*T, C), so that each Linear exports as one Gemm with its bias) and the positions
    attended over."""
    batch: int
    seq: int
    total: torch.Tensor                  # () int32: cached positions + seq


@dataclass
class CacheBuffers:
    """A preallocated KV cache, the layout of the exported decode graph: per layer (key, value) buffers
    (B, n_kv, capacity, hs) whose first `length` positions are filled; a call writes its own positions
    after them instead of concatenating (in onnxruntime, GroupQueryAttention writes them in place)."""
    layers: list[KVCache]
    length: torch.Tensor                 # () int64: positions already in the buffers


@dataclass
class Intervention:
    """Edits of one forward pass on the explicit path, for interpretability (`core.interpret` runs them
    exported, as inspect.onnx). Each edit is a blend `mix * x + (1 - mix) * value`: mix 1 leaves x as it
    is (exactly: value is then multiplied by 0), mix 0 replaces it by value (0: zero ablation, a mean:
    mean ablation, another run's activation: patching). Any field may be None (no edit there).

    head_mix (B, T, L, nh) and head_value (1 | B, T, L, nh, hs) edit each head's output z (its slice
    of the heads' concatenation, before c_proj); resid_mix (B, T, L + 1) and resid_value
    (1 | B, T, L + 1, C) edit the residual stream entering block l, l = L meaning entering ln_f. A value
    of batch 1 serves every row: one source (a clean run, a mean) for a batch of edited runs."""
    head_mix: torch.Tensor | None = None
    head_value: torch.Tensor | None = None
    resid_mix: torch.Tensor | None = None
    resid_value: torch.Tensor | None = None


def _blend(x: torch.Tensor, mix: torch.Tensor | None, value: torch.Tensor | None) -> torch.Tensor:
    """mix * x + (1 - mix) * value, with mix broadcast over x's last dimension."""
    if mix is None:
        return x
    mix = mix.unsqueeze(-1)
    return mix * x + (1 - mix) * (value if value is not None else torch.zeros_like(x))


def _layer(mix: torch.Tensor | None, value: torch.Tensor | None, i: int):
    """Layer i's slice (dimension 2) of an Intervention's mix and value."""
    return (None if mix is None else mix[:, :, i]), (None if value is None else value[:, :, i])


def make_norm(config: ModelConfig) -> nn.Module:
    if config.norm == "none":
        return nn.Identity()
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd, eps=config.norm_eps)
    return nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)


def sinusoidal_table(n_positions: int, dim: int) -> torch.Tensor:
    """Vaswani et al. 2017's fixed table (the formula lives in core.positions, shared with the pages)."""
    return torch.from_numpy(positions.sinusoidal_table(n_positions, dim))


def rope_tables(n_positions: int, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (n_positions, head_dim/2) of RoPE's rotation angles pos * base^(-2i/hs)."""
    angles = torch.from_numpy(positions.rope_angles(n_positions, head_dim, base))
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (..., hs) by its positions' angles, pairing dimension i with i + hs/2 (the
    "rotate-half" layout of GPT-NeoX and LLaMA: a permutation of the paper's interleaved pairs, and
    cheaper, since it needs no interleaving copy). cos and sin (..., hs/2) broadcast against x."""
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def causal_mask(t_query: int, t_key: int, device) -> torch.Tensor:
    """Bottom-right aligned causal mask (t_query, t_key), True where attention is allowed.

    With a KV cache the queries are the last t_query positions of t_key, so query i may see keys up
    to t_key - t_query + i. (`is_causal=True` aligns top-left and is wrong once there is a cache.)
    """
    offset = t_key - t_query
    q = torch.arange(t_query, device=device)[:, None]
    k = torch.arange(t_key, device=device)[None, :]
    return k <= q + offset


@torch.library.custom_op("playground::buffered_attention", mutates_args=())
def buffered_attention(qkv: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor, seqlens_k: torch.Tensor,
                       total: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None, n_head: int,
                       n_kv: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Causal attention of T new positions over a preallocated cache, with the semantics of
    onnxruntime's GroupQueryAttention (com.microsoft), which `core.export` maps it to, one node per layer:
    qkv (B, T, (nh + 2 n_kv) * hs) is c_attn's output for the new positions (query heads, then key heads,
    then value heads); with RoPE tables cos and sin (context, hs/2), q and k are rotated at their
    positions total-T .. total-1; k and v go into the buffers (B, n_kv, capacity, hs) at those
    positions; seqlens_k (B,) int32 is total-1 and total () int32 the positions attended over. Returns
    the heads' output (B, T, nh * hs) and the filled buffers (new tensors here; the same memory in the
    exported graph)."""
    B, T, _ = qkv.shape
    hs = k_buf.size(-1)
    end = int(total)
    qkv = qkv.view(B, T, n_head + 2 * n_kv, hs)
    qk, v = qkv[:, :, :n_head + n_kv], qkv[:, :, n_head + n_kv:]
    if cos is not None:
        qk = apply_rope(qk, cos[end - T:end, None, :], sin[end - T:end, None, :])
    k_buf, v_buf = k_buf.clone(), v_buf.clone()
    k_buf[:, :, end - T:end] = qk[:, :, n_head:].transpose(1, 2)
    v_buf[:, :, end - T:end] = v.transpose(1, 2)
    keys = k_buf[:, :, :end].repeat_interleave(n_head // n_kv, dim=1)          # (B, nh, total, hs)
    values = v_buf[:, :, :end].repeat_interleave(n_head // n_kv, dim=1)
    y = F.scaled_dot_product_attention(qk[:, :, :n_head].transpose(1, 2), keys, values,
                                       attn_mask=causal_mask(T, end, qkv.device))
    return y.transpose(1, 2).reshape(B, T, n_head * hs), k_buf, v_buf


@buffered_attention.register_fake
def _(qkv, k_buf, v_buf, seqlens_k, total, cos, sin, n_head, n_kv):
    B, T, _ = qkv.shape
    return qkv.new_empty(B, T, n_head * k_buf.size(-1)), torch.empty_like(k_buf), torch.empty_like(v_buf)


class CausalSelfAttention(nn.Module):

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_head = config.n_head
        self.n_kv = config.kv_heads
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        # causal (GPT): position t attends to 0..t; bidirectional (BERT's encoder): to every position
        self.causal = config.attention == "causal"
        # query, key and value projections for all heads in one matmul: n_head query heads, then n_kv key
        # heads and n_kv value heads (n_kv = n_head: GPT-2's c_attn; fewer: grouped-query attention)
        self.c_attn = nn.Linear(config.n_embd, (config.n_head + 2 * self.n_kv) * config.head_dim,
                                bias=config.has_qkv_bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                past: KVCache | None = None, explicit: bool = False, buffered: BufferedStep | None = None,
                head_edit: tuple[torch.Tensor, torch.Tensor | None] | None = None
                ) -> tuple[torch.Tensor, KVCache, dict | None]:
        """Returns the output, this layer's (k, v) cache (B, n_kv, T_k, hs), and on the explicit path what a
        reader of the model wants to see: probs (B, nh, T, T_k), q, k, v (B, nh, T|T_k, hs; q and k after
        RoPE; k and v repeated to one per query head, so head h reads k[:, h] under grouped-query attention
        too), heads (B, T, C: every head's output side by side) and proj (B, T, C: after c_proj).
        head_edit (explicit path only): (mix (B, T, nh), value (1 | B, T, nh, hs) or None) blended into
        each head's output before c_proj (see `Intervention`); heads and proj are then the edited ones."""
        nh, nkv = self.n_head, self.n_kv
        if buffered is not None:
            # past holds preallocated buffers (CacheBuffers), x is (B*T, C) and rope the whole tables: one
            # fused operator rotates, caches and attends
            (B, T, total), C = buffered, x.size(-1)
            hs = C // nh
            qkv, tables = self.c_attn(x).view(B, T, -1), (None, None)
            if rope is not None and hs % 16 == 0:
                tables = rope              # the operator rotates (onnxruntime's kernel needs hs % 16 == 0)
            elif rope is not None:
                pos = torch.arange(T, device=x.device) + (total - T)
                qkv = qkv.view(B, T, nh + 2 * nkv, hs)
                qk = apply_rope(qkv[:, :, :nh + nkv], rope[0][pos][:, None, :], rope[1][pos][:, None, :])
                qkv = torch.cat((qk, qkv[:, :, nh + nkv:]), dim=2).view(B, T, -1)
            y, k_buf, v_buf = buffered_attention(qkv, past[0], past[1], (total - 1).expand(B), total,
                                                 *tables, nh, nkv)
            return self.resid_dropout(self.c_proj(y.view(B * T, C))), (k_buf, v_buf), None
        B, T, C = x.size()
        hs = C // nh
        qkv = self.c_attn(x).view(B, T, nh + 2 * nkv, hs)             # (B, T, nh + 2 nkv, hs)
        qk, v = qkv[:, :, :nh + nkv], qkv[:, :, nh + nkv:]
        if rope is not None:
            cos, sin = rope                                            # (T, hs/2) at these positions
            # rotate q and k in one pass: (B, T, nh + nkv, hs) against (T, 1, hs/2)
            qk = apply_rope(qk, cos[:, None, :], sin[:, None, :])
        q, k = qk[:, :, :nh].transpose(1, 2), qk[:, :, nh:].transpose(1, 2)   # (B, nh|nkv, T, hs)
        v = v.transpose(1, 2)                                                 # (B, nkv, T, hs)
        if past is not None:
            k = torch.cat((past[0], k), dim=2)                           # (B, nkv, T_past+T, hs)
            v = torch.cat((past[1], v), dim=2)
        present = (k, v)
        T_k = k.size(2)
        if nkv != nh:
            # each key/value head serves nh/nkv consecutive query heads (LLaMA's repeat_kv): repeat them
            # after the cache, so the cache keeps its smaller size
            k = k[:, :, None].expand(B, nkv, nh // nkv, T_k, hs).reshape(B, nh, T_k, hs)
            v = v[:, :, None].expand(B, nkv, nh // nkv, T_k, hs).reshape(B, nh, T_k, hs)
        dropout_p = self.dropout if self.training else 0.0
        probs = seen = None
        if explicit:
            # the textbook path: softmax(q k^T / sqrt(hs) + mask) v, keeping the probabilities
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))   # (B, nh, T, T_k)
            if self.causal:
                att = att.masked_fill(~causal_mask(T, T_k, x.device), float("-inf"))
            probs = F.softmax(att, dim=-1)
            y = F.dropout(probs, p=dropout_p, training=self.training) @ v       # (B, nh, T, hs)
            if head_edit is not None:
                y = _blend(y.transpose(1, 2), *head_edit).transpose(1, 2)     # blended as (B, T, nh, hs)
        elif past is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=self.causal)
        else:
            # with a cache, is_causal would align the mask top-left: build the bottom-right one (no
            # branch on T == 1, so an exported graph keeps T dynamic)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(T, T_k, x.device),
                                               dropout_p=dropout_p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)   # re-assemble all head outputs side by side
        out = self.c_proj(y)
        if explicit:
            seen = {"probs": probs, "q": q, "k": k, "v": v, "heads": y, "proj": out}
        return self.resid_dropout(out), present, seen


class MLP(nn.Module):

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.swiglu = config.mlp == "swiglu"
        H = config.mlp_width
        # swiglu: one matmul makes gate and up side by side (LLaMA's gate_proj and up_proj, fused)
        self.c_fc = nn.Linear(config.n_embd, 2 * H if self.swiglu else H, bias=config.bias)
        if self.swiglu:
            self.act = nn.SiLU()
        elif config.mlp == "relu":
            self.act = nn.ReLU()
        else:
            # exact (erf) GELU by default, as nanoGPT: on the reference CPU its kernels ran 2.2x faster than
            # GPT-2's tanh form ("gelu_new"), which gelu_tanh is, for checkpoints trained with it
            self.act = nn.GELU(approximate="tanh" if config.mlp == "gelu_tanh" else "none")
        self.c_proj = nn.Linear(H, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)                                   # (B, T, H), or (B, T, 2H) for swiglu
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            h = self.act(gate) * up                        # (B, T, H)
        else:
            h = self.act(h)
        return self.dropout(self.c_proj(h))


class Routing(NamedTuple):
    """One mixture-of-experts layer's routing of N tokens (N = B*T, in order)."""
    probs: torch.Tensor                  # (N, E) the router's softmax over every expert (float32)
    experts: torch.Tensor                # (N, k) the chosen experts, most probable first
    weights: torch.Tensor                # (N, k) their weights in the sum of their outputs


def balance_loss(route: Routing, n_experts: int) -> torch.Tensor:
    """Switch Transformer's load-balancing loss (Fedus et al. 2021, eq. 4): E * sum_i f_i * P_i, f_i the
    fraction of the N * k assignments that went to expert i and P_i the mean router probability of expert i.
    Balanced routing (f_i = P_i = 1/E) gives 1; routing every token to one expert with certainty gives E.
    (transformers' load_balancing_loss_func does not divide the assignments by k: it is k times this.)"""
    k = route.experts.size(-1)
    f = F.one_hot(route.experts, n_experts).sum(1).float().mean(0) / k     # (E,) sums to 1
    P = route.probs.mean(0)                                                # (E,)
    return n_experts * (f * P).sum()


class MoE(nn.Module):
    """A mixture of experts in an MLP's place: a router (Linear n_embd -> E) scores every expert, each
    token goes to its moe_top_k most probable, and its output is their outputs weighted by the router's
    probabilities, renormalised over the chosen ones (Mixtral) or raw (Switch; moe_normalize False). Each
    expert is an MLP of the configured kind."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.top_k, self.normalize = config.moe_top_k, config.moe_normalize
        self.router = nn.Linear(config.n_embd, config.n_experts, bias=False)
        self.experts = nn.ModuleList([MLP(config) for _ in range(config.n_experts)])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Routing]:
        shape = x.shape
        x = x.reshape(-1, shape[-1])                                   # (N, C)
        probs = F.softmax(self.router(x).float(), dim=-1)              # (N, E), float32 under autocast too
        weights, experts = probs.topk(self.top_k, dim=-1)              # (N, k)
        if self.normalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        if torch.compiler.is_exporting():
            # one static graph: every expert on every token, combined with the gates (0 off the chosen
            # experts, so the sum is exact); E x the MLP compute, see bench/moe_vs_dense.py
            gates = torch.zeros_like(probs).scatter(1, experts, weights)        # (N, E)
            y = sum(gates[:, e, None] * expert(x) for e, expert in enumerate(self.experts))
        else:
            # each expert runs only on the tokens sent to it
            y = torch.zeros_like(x)
            for e, expert in enumerate(self.experts):
                token, slot = torch.where(experts == e)
                if token.numel():
                    y.index_add_(0, token, (expert(x[token]) * weights[token, slot, None]).to(y.dtype))
        return y.view(shape), Routing(probs, experts, weights)


class Block(nn.Module):

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config)
        # an attention-only block (mlp "none") has neither MLP nor ln_2; n_experts makes the MLP a mixture
        self.ln_2 = None if config.mlp == "none" else make_norm(config)
        self.mlp = None if config.mlp == "none" else MoE(config) if config.n_experts else MLP(config)

    def forward(self, x, rope=None, past=None, explicit=False, buffered=None, head_edit=None):
        a, present, seen = self.attn(self.ln_1(x), rope, past, explicit, buffered, head_edit)
        x = x + a
        if seen is not None:
            seen["resid_mid"] = x                          # (B, T, C): the residual stream after attention
        route = None
        if isinstance(self.mlp, MoE):
            m, route = self.mlp(self.ln_2(x))
            x = x + m
        elif self.mlp is not None:
            x = x + self.mlp(self.ln_2(x))
        return x, present, seen, route


@dataclass
class GPTOutput:
    logits: torch.Tensor                       # (B, T, vocab) or (B, 1, vocab) when only the last is asked
    loss: torch.Tensor | None = None           # mean cross-entropy in nats/token, when targets are given
    present: list[KVCache] | None = None       # per layer (k, v) including this call's positions
    attention_parts: list[dict] | None = None      # per layer probs, q, k, v, heads, proj (explicit path only)
    # with an Intervention (the inspection path): the residual stream at 2L + 1 points, (B, T, 2L + 1, C):
    # entering block 0, then per block after its attention and after the block (the last: entering ln_f),
    # and each head's output z (B, T, L, nh, hs), both as the edited pass computed them
    resid: torch.Tensor | None = None
    head_z: torch.Tensor | None = None
    hidden: torch.Tensor | None = None         # (B, T, C) after the final norm: what a reward or value head reads
    # a mixture of experts (n_experts > 0): each layer's routing of each token, and with targets the
    # load-balancing loss (`balance_loss`, the mean over layers; the trainer adds moe_aux_coef x it to `loss`)
    expert_ids: torch.Tensor | None = None     # (B, T, L, k) the experts chosen, most probable first
    expert_weights: torch.Tensor | None = None     # (B, T, L, k) their weights in the sum of their outputs
    router_probs: torch.Tensor | None = None   # (B, T, L, E) the router's softmax over every expert
    aux_loss: torch.Tensor | None = None       # () scalar

    @property
    def attentions(self) -> list[torch.Tensor] | None:
        """Per layer attention probabilities (B, nh, T, T_k), explicit path only."""
        return None if self.attention_parts is None else [p["probs"] for p in self.attention_parts]


class GPT(nn.Module):

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=make_norm(config),
        ))
        if config.pos_encoding == "learned":
            self.transformer["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        elif config.pos_encoding == "sinusoidal":
            self.register_buffer("pos_table", sinusoidal_table(config.block_size, config.n_embd),
                                 persistent=False)
        else:
            cos, sin = rope_tables(config.block_size, config.head_dim, config.rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        self.apply(self._init_weights)
        # GPT-2's scaled init of the projections into the residual stream: init_std/sqrt(2 * n_layer)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=config.init_std / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module: nn.Module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                past: list[KVCache] | CacheBuffers | None = None, use_cache: bool = False,
                return_attention: bool = False, last_only: bool = False,
                intervention: Intervention | None = None) -> GPTOutput:
        """idx (B, T) token ids, positions starting after `past`'s length.

        past: each layer's cache from an earlier call, or preallocated CacheBuffers (the exported decode
        graph's layout: positions then start at its `length`, a tensor, and `present` is the buffers).
        targets (B, T): returns the mean cross-entropy (ids of -1 are ignored).
        use_cache: return `present`, each layer's keys and values, to pass as `past` next time.
        return_attention: take the explicit attention path and return every layer's probabilities.
        last_only: compute logits for the last position only (generation; saves the head's matmul).
        intervention: the inspection path (explicit attention, no cache): apply its edits and return the
        residual stream and every head's output (`GPTOutput.resid`, `head_z`); `Intervention()` edits nothing.
        """
        B, T = idx.size()
        if self.config.attention == "bidirectional" and (past is not None or use_cache):
            raise ValueError("a bidirectional model attends over the whole sequence at once: it has no KV cache "
                             "(a new token would change every earlier position's output)")
        if intervention is not None:
            if past is not None or use_cache:
                raise ValueError("an intervention runs a whole sequence on the explicit path: no KV cache")
            return_attention = True
        buffered = None
        if isinstance(past, CacheBuffers):
            # a traced length (the exported graph's input): positions are gathered, never sliced by a Python int
            pos = torch.arange(T, device=idx.device) + past.length
            past, buffered = past.layers, BufferedStep(B, T, (past.length + T).to(torch.int32))
        else:
            t_past = past[0][0].size(2) if past else 0
            if t_past + T > self.config.block_size:
                raise ValueError(f"cannot attend over {t_past + T} positions: the context length "
                                 f"(block_size) is {self.config.block_size}")
            pos = torch.arange(t_past, t_past + T, device=idx.device)
        x = self.transformer.wte(idx)                          # (B, T, C)
        rope = None
        if self.config.pos_encoding == "learned":
            x = x + self.transformer.wpe(pos)                  # (T, C) broadcast over B
        elif self.config.pos_encoding == "sinusoidal":
            x = x + self.pos_table[pos]
        elif buffered is not None:
            rope = (self.rope_cos, self.rope_sin)               # whole tables: the buffered operator rotates
        else:
            rope = (self.rope_cos[pos], self.rope_sin[pos])
        x = self.transformer.drop(x)
        if buffered is not None:
            x = x.view(B * T, -1)                              # (B*T, C): see BufferedStep
        presents, parts, points, routes = [], [], [], []
        iv = intervention
        for i, block in enumerate(self.transformer.h):
            head_edit = None
            if iv is not None:
                x = _blend(x, *_layer(iv.resid_mix, iv.resid_value, i))
                points.append(x)
                if iv.head_mix is not None:
                    head_edit = _layer(iv.head_mix, iv.head_value, i)
            x, present, seen, route = block(x, rope, past[i] if past else None, return_attention, buffered,
                                            head_edit)
            if route is not None:
                routes.append(route)
            if use_cache:
                presents.append(present)
            if return_attention:
                parts.append(seen)
            if iv is not None:
                points.append(seen["resid_mid"])
        resid = head_z = None
        if iv is not None:
            x = _blend(x, *_layer(iv.resid_mix, iv.resid_value, self.config.n_layer))
            points.append(x)
            resid = torch.stack(points, dim=2)                                    # (B, T, 2L + 1, C)
            nh = self.config.n_head
            head_z = torch.stack([p["heads"].view(B, T, nh, -1) for p in parts], dim=2)   # (B, T, L, nh, hs)
        x = self.transformer.ln_f(x).view(B, T, -1)
        if targets is not None:
            logits = self.lm_head(x)                           # (B, T, vocab)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1),
                                   ignore_index=-1)
        else:
            logits = self.lm_head(x[:, [-1], :] if last_only else x)
            loss = None
        out = GPTOutput(logits, loss, presents if use_cache else None, parts if return_attention else None,
                        resid, head_z, x)
        if routes:
            out.router_probs, out.expert_ids, out.expert_weights = (
                torch.stack(t, dim=1).view(B, T, len(routes), -1) for t in zip(*routes))   # (B, T, L, k|E)
            if targets is not None:
                out.aux_loss = torch.stack([balance_loss(r, self.config.n_experts) for r in routes]).mean()
        return out

    # -- sizes ---------------------------------------------------------------------------------------
    def count_parameters(self) -> dict[str, int]:
        """total: every distinct parameter (a tied head counted once).
        embedding: the token table wte, the learned positions wpe and an untied lm_head (vocabulary
        and position matrices). non_embedding: the rest; Kaplan et al. (2020) fit their laws on this N.
        """
        return count_parameters(self.config)

    def flops_per_token(self, seq_len: int | None = None, training: bool = True) -> float:
        return flops_per_token(self.config, seq_len, training)

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample continuations with a KV cache (for training-time samples; the playground's full
        decoding engine is numpy on the onnxruntime path). Slides the window at the context limit."""
        was_training = self.training
        self.eval()
        past = None
        inp = idx[:, -self.config.block_size:]
        for _ in range(max_new_tokens):
            if past is not None and past[0][0].size(2) + 1 > self.config.block_size:
                past, inp = None, idx[:, -self.config.block_size:]   # window full: recompute
            out = self(inp, past=past, use_cache=True, last_only=True)
            past = out.present
            logits = out.logits[:, -1, :].float()
            if temperature == 0:
                nxt = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k:
                    v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                    logits[logits < v[:, [-1]]] = float("-inf")
                nxt = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
            idx = torch.cat((idx, nxt), dim=1)
            inp = nxt
        self.train(was_training)
        return idx
