"""Config: what a model is and how a run trains it, as plain dataclasses that never import torch.

Holds `ModelConfig` (a GPT's shape and design choices) with the sizes that follow from it alone
(`count_parameters`, `flops_per_token`), and `TrainConfig` (a training run's settings, every field a
flag of `python -m core.train`) with `RESUMABLE_OVERRIDES`, the fields a resumed run may change, and
`PostTrainConfig` (a post-training run's: every field a flag of `python -m core.posttrain`) with its stages'
presets.
They live apart from the torch code that uses them because the inference side reads them too: the
runtime opens a model card into a `ModelConfig`, the Train page sizes a model before any torch is
loaded, a sweep plans its runs, and a hosted demo installs no torch at all.

Deliberately not here: the modules (`core.model`), the training loop (`core.train`), and the
checks' idiom (`core.checks`, which every field below goes through).
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, fields

from core import checks
from core.checks import ConfigError

POS_ENCODINGS = ("learned", "sinusoidal", "rope")
NORMS = ("layernorm", "rmsnorm", "none")
MLPS = ("gelu", "gelu_tanh", "swiglu", "relu", "none")
DTYPES = ("auto", "float32", "bfloat16", "float16")
OPTIMIZERS = ("adamw", "muon")
LR_SCHEDULES = ("cosine", "linear")
ATTENTIONS = ("causal", "bidirectional")
OBJECTIVES = ("next-token", "mlm")
# why a masked LM has no int8/fp16 variant (core.export and core.quantize refuse it) and where its weights come back
MLM_FP32_ONLY = ("the int8 and fp16 variants are measured on cached decoding, which a masked LM does not do: it runs "
                 "in fp32")
MLM_NO_READBACK = ("{source} is a masked LM: its graph is fused for a full pass and does not keep the weights by "
                   "name, so they come back from its run's checkpoint (runs/NAME), not from the export")
# why a masked LM cannot be post-trained here (core.posttrain refuses it; the Post-train page's board too)
MLM_NOT_A_BASE = ("{source} is a masked LM: it fills blanks from both sides and writes nothing left to right, and "
                  "every post-training stage trains or samples next tokens. Start from a next-token (GPT) model")


@dataclass
class ModelConfig:
    vocab_size: int = 257       # the tokenizer's n_vocab (byte tokenizer: 256 bytes + <|endoftext|>)
    block_size: int = 64        # context length: the longest sequence the model attends over
    n_layer: int = 4            # transformer blocks; depth buys composition of features
    n_head: int = 4             # attention heads per block; n_embd must divide evenly among them
    n_embd: int = 128           # residual stream width
    dropout: float = 0.0        # 0 for small data/short runs (nanoGPT's CPU recipe); 0.1-0.2 to fight overfitting
    bias: bool = True           # biases in Linear and LayerNorm, as GPT-2 (q/k/v: qkv_bias); False is slightly faster
    pos_encoding: str = "learned"   # learned (GPT-2) | sinusoidal (Vaswani 2017) | rope (Su 2021)
    norm: str = "layernorm"     # layernorm (GPT-2) | rmsnorm (cheaper, LLaMA) | none (every norm an identity: the
                                # residual stream stays linear in the heads' outputs, as interpretability's toy
                                # models and Nanda et al.'s grokking model have it)
    tie_embeddings: bool = True     # share wte with lm_head: fewer parameters, and GPT-2 does it
    mlp: str = "gelu"           # gelu (exact erf; nanoGPT) | gelu_tanh (GPT-2's "gelu_new") | swiglu (LLaMA,
                                # Qwen: silu(gate) * up, one more matrix for a better loss at equal compute) |
                                # relu (Nanda et al.'s grokking model: its Fourier features are easiest to read) |
                                # none (attention-only blocks, the induction-head circuits of Olsson et al. 2022)
    mlp_hidden: int = 0         # the MLP's inner width; 0 = 4 x n_embd (GPT-2's ratio; LLaMA-family models set theirs)
    n_kv_head: int = 0          # key/value heads (grouped-query attention): 0 = n_head; fewer shrink the KV cache,
                                # each shared by n_head / n_kv_head query heads
    rope_theta: float = 10000.0     # RoPE's base: a larger one turns the slowest pairs more slowly, for long contexts
    norm_eps: float = 1e-5      # added under every norm's square root; a checkpoint fixes its own (LLaMA, Qwen: 1e-6)
    qkv_bias: bool | None = None    # biases on the q/k/v projection; None follows `bias` (Qwen2: on, with bias off)
    init_std: float = 0.02      # std of the initial weights (GPT-2's 0.02); grokking needs a model that can memorise
                                # first: Nanda et al. initialise at about 1/sqrt(n_embd)
    attention: str = "causal"   # causal (GPT: position t sees 0..t, so it can generate left to right) | bidirectional
                                # (BERT: every position sees the whole sequence; no KV cache, no generation)
    objective: str = "next-token"   # what the head predicts, so what the runtime may do with it: next-token (GPT) |
                                # mlm (BERT's masked LM: the original token at masked positions, from both sides;
                                # the tokenizer gains a [MASK] token)
    n_experts: int = 0          # mixture of experts: 0 = one dense MLP per block; E >= 1 = E MLPs of the `mlp` kind
                                # and a router that sends each token to moe_top_k of them: parameters grow with E,
                                # a token's compute only with moe_top_k (Shazeer 2017; Switch; Mixtral)
    moe_top_k: int = 2          # experts per token (Mixtral 2 of 8; Switch Transformer 1): the active MLPs
    moe_aux_coef: float = 0.01  # weight of the load-balancing loss E * sum_i f_i P_i added to the training loss
                                # (Switch's 0.01): without it the router collapses onto a few experts
    moe_normalize: bool = True  # renormalise the chosen experts' router probabilities to sum to 1 (Mixtral); False
                                # weighs each by its raw probability (Switch, k = 1), which keeps the router's
                                # gradient from the main loss when k = 1

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            checks.integer(name, getattr(self, name), 1)
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        checks.choice("pos_encoding", self.pos_encoding, POS_ENCODINGS)
        checks.choice("norm", self.norm, NORMS)
        if self.pos_encoding == "rope" and (self.n_embd // self.n_head) % 2:
            raise ConfigError(f"rope needs an even head size, got n_embd/n_head = {self.n_embd // self.n_head}")
        checks.number("dropout", self.dropout, 0.0, 1.0, high_open=True)
        checks.choice("mlp", self.mlp, MLPS)
        checks.integer("mlp_hidden", self.mlp_hidden, 0)
        checks.integer("n_kv_head", self.n_kv_head, 0, self.n_head)
        if self.n_head % self.kv_heads:
            raise ConfigError(f"n_head ({self.n_head}) must be divisible by n_kv_head ({self.n_kv_head}): each "
                              f"key/value head serves the same number of query heads")
        checks.number("rope_theta", self.rope_theta, 0.0, low_open=True)
        checks.number("norm_eps", self.norm_eps, 0.0, 1.0, low_open=True)
        checks.number("init_std", self.init_std, 0.0, 10.0, low_open=True)
        for name in ("bias", "tie_embeddings") + (("qkv_bias",) if self.qkv_bias is not None else ()):
            checks.choice(name, getattr(self, name), (True, False))
        checks.choice("attention", self.attention, ATTENTIONS)
        checks.choice("objective", self.objective, OBJECTIVES)
        if self.objective == "mlm" and self.attention != "bidirectional":
            raise ConfigError("objective mlm needs attention bidirectional: a masked token is predicted from the "
                              "words on both sides, and a causal mask would hide the right-hand side")
        if self.objective == "next-token" and self.attention != "causal":
            raise ConfigError("objective next-token needs attention causal: with bidirectional attention every "
                              "position sees the token it must predict, and the model learns to copy it")
        checks.integer("n_experts", self.n_experts, 0)
        checks.integer("moe_top_k", self.moe_top_k, 1)
        checks.number("moe_aux_coef", self.moe_aux_coef, 0.0, 1.0)
        checks.choice("moe_normalize", self.moe_normalize, (True, False))
        if self.n_experts and self.mlp == "none":
            raise ConfigError(f"n_experts ({self.n_experts}) makes each block's MLP a mixture of experts, but mlp is "
                              f"'none' (attention-only): choose an MLP kind, or set n_experts to 0")
        if self.n_experts and self.moe_top_k > self.n_experts:
            raise ConfigError(f"moe_top_k ({self.moe_top_k}) must be at most n_experts ({self.n_experts}): a token "
                              f"cannot go to more experts than there are")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        """Key/value heads in use (n_kv_head, or n_head when it is 0): the KV cache's second dimension."""
        return self.n_kv_head or self.n_head

    @property
    def mlp_width(self) -> int:
        """The MLP's inner width in use (mlp_hidden, or 4 x n_embd when it is 0)."""
        return self.mlp_hidden or 4 * self.n_embd

    @property
    def active_experts(self) -> int:
        """MLPs each token runs through per block: moe_top_k under a mixture of experts, else 1."""
        return min(self.moe_top_k, self.n_experts) if self.n_experts else 1

    @property
    def has_qkv_bias(self) -> bool:
        """Whether c_attn (q, k and v) has biases: qkv_bias, or `bias` when it is None."""
        return self.bias if self.qkv_bias is None else self.qkv_bias

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**d)


def count_parameters(config: ModelConfig) -> dict[str, int]:
    """Parameter counts from the config alone (equal to counting a built model's tensors).

    total: every distinct parameter (a tied head counted once). embedding: the token table wte, the
    learned positions wpe and an untied lm_head (vocabulary and position matrices). non_embedding: the
    rest; Kaplan et al. (2020) fit their laws on this N. active and active_non_embedding: the same with only
    the moe_top_k experts a token runs through (and every router) counted, what a token's compute sees;
    equal to total and non_embedding for a dense model."""
    C, V, L, H = config.n_embd, config.vocab_size, config.n_layer, config.mlp_width
    b, bq = int(config.bias), int(config.has_qkv_bias)
    norm = 0 if config.norm == "none" else C * (2 if config.norm == "layernorm" and config.bias else 1)
    qkv = C + 2 * config.kv_heads * config.head_dim          # q for every head, k and v for the kv heads
    attn = C * qkv + bq * qkv + C * C + b * C
    fc = 2 * H if config.mlp == "swiglu" else H               # swiglu's c_fc holds gate and up side by side
    mlp = 0 if config.mlp == "none" else C * fc + b * fc + H * C + b * C
    block_norms = norm * (1 if config.mlp == "none" else 2)  # an attention-only block has no ln_2
    E = config.n_experts
    router = C * E                                            # the router: Linear(n_embd, E), no bias
    non_embedding = L * (block_norms + attn + router + max(E, 1) * mlp) + norm
    active_non_embedding = L * (block_norms + attn + router + config.active_experts * mlp) + norm
    embedding = V * C
    if config.pos_encoding == "learned":
        embedding += config.block_size * C
    if not config.tie_embeddings:
        embedding += V * C
    return {"total": non_embedding + embedding, "embedding": embedding, "non_embedding": non_embedding,
            "active": active_non_embedding + embedding, "active_non_embedding": active_non_embedding}


def flops_per_token(config: ModelConfig, seq_len: int | None = None, training: bool = True) -> float:
    """FLOPs to process one token at context length seq_len (default block_size).

    Forward = 2 per multiply-add of every matmul weight (the non-embedding matrices and the output
    head, tied or not: the lookup of wte costs nothing, its use as lm_head does) plus attention's
    q·k and p·v, 2 * 2 * n_layer * seq_len * n_embd. Training (forward + backward) is three times
    the forward: 6N + 12 * n_layer * seq_len * n_embd (Kaplan et al. 2020; PaLM's appendix B).
    Under a mixture of experts N counts the active parameters: the router and the moe_top_k experts a
    token runs through (the router's softmax and the weighted sum of the experts are not counted).
    """
    T = config.block_size if seq_len is None else seq_len
    matmul_params = count_parameters(config)["active_non_embedding"] + config.vocab_size * config.n_embd
    forward = 2 * matmul_params + 4 * config.n_layer * T * config.n_embd
    return 3 * forward if training else forward


@dataclass
class TrainConfig:
    out_dir: str = "runs/shakespeare-byte"   # run directory: checkpoints, tokenizer, log, run.json
    corpus: str = "tinyshakespeare"         # a named corpus (core.data.CORPORA) or a local text file
    task: str = ""                          # a synthetic task instead of a corpus (core.tasks: "induction",
                                            # "modular-addition:p=97,train_fraction=0.4", ...): generated from
                                            # its spec and the seed, with its own symbol tokenizer
    full_batch: bool = False                # every step on the task's whole training set (a finite task's
                                            # examples), as grokking's papers train; batch_size is then unused
    data_dir: str | None = None             # corpus/token cache; None: $LLM_PLAYGROUND_DATA or ~/.cache
    tokenizer: str = "byte"                 # byte | bpe (trained on the train split) | a saved tokenizer dir
    bpe_vocab_size: int = 4096              # ordinary tokens of a trained BPE (256 bytes + merges)
    val_fraction: float = 0.1               # tail of the text held out (nanoGPT's split for comparable losses)
    batch_size: int = 12                    # sequences per micro-batch
    grad_accum_steps: int = 1               # micro-batches per optimizer step: a larger batch in fixed memory
    max_steps: int = 2000                   # optimizer steps in the whole run
    learning_rate: float = 1e-3             # peak learning rate after warmup
    min_lr: float = 1e-4                    # floor of the cosine decay (~peak/10, per Chinchilla)
    warmup_steps: int = 100                 # linear warmup: Adam's moments are noisy at first
    lr_decay_steps: int | None = None       # end of the decay; None means max_steps
    lr_schedule: str = "cosine"             # the decay's shape: cosine (nanoGPT) | linear (modded-nanogpt's cooldown)
    lr_hold: float = 0.0                    # share of the run after warmup held at the peak before the decay starts
                                            # (warmup-stable-decay: 0.5 decays over the second half only); 0: at once
    weight_decay: float = 0.1               # applied to matrices only; norms and biases are not decayed
    beta1: float = 0.9
    beta2: float = 0.99                     # 0.99 rather than 0.999: small batches, few tokens per step
    optimizer: str = "adamw"                # adamw | muon: Muon (orthogonalised momentum) for the blocks' 2-D
                                            # matrices, AdamW for embeddings, head, biases and norms (as nanochat
                                            # and modded-nanogpt do): the same loss in fewer steps
    muon_lr: float = 0.02                   # Muon's peak lr (its updates have a fixed size, so its scale is not
                                            # AdamW's); it follows the same warmup and decay as learning_rate
    muon_momentum: float = 0.95             # Muon's Nesterov momentum (torch's and Keller Jordan's default)
    grokfast_alpha: float = 0.0             # Grokfast-EMA (Lee et al. 2024): add grokfast_lambda x an EMA (this
                                            # decay) of past gradients to each gradient, amplifying the slow
                                            # components that generalisation follows; 0 off, 0.98 the paper's
    grokfast_lambda: float = 2.0            # the amplification of that EMA (the paper's default 2)
    grad_clip: float = 1.0                  # max global grad norm; 0 disables clipping (the norm is still logged)
    dtype: str = "auto"                     # auto | float32 | bfloat16 | float16 (autocast for matmuls)
    compile: bool = False                   # torch.compile: pays a one-off compile for faster steps
    device: str = "auto"                    # auto (cuda when present, else cpu) | cpu | cuda | cuda:N
    threads: int = 0                        # torch intra-op threads; 0 measures (see core.train.choose_threads):
                                            # on a busy 2-core machine 1 thread ran 5-14x faster than 2
    seed: int = 1337                        # one seed for init, batches and dropout: same seed, same run
    eval_interval: int = 250                # steps between val-loss estimates
    eval_iters: int = 200                   # batches per loss estimate (fixed batches: comparable over time)
    eval_batch_size: int = 0                # sequences per eval batch; 0: batch_size (nanoGPT's estimate is 200
                                            # batches of 12: a run with a larger batch keeps its cost with 12)
    eval_at_start: bool = True              # the untrained loss (about ln vocab) anchors the curve; a
                                            # sweep that needs only the final loss skips it
    eval_train: bool = True                 # estimate the train loss with eval_iters batches too; False halves an
                                            # eval's cost and reports the mean loss of the last (<= 50) steps instead
    exact_final_eval: bool = False          # the last eval also measures the whole val split (every non-overlapping
                                            # window: no sampling noise), once, as the figure to publish
    max_seconds: float = 0.0                # wall-time budget of the training loop (steps and the evals within;
                                            # the last eval comes after it); 0: none. When set, the lr decay follows
                                            # elapsed / max_seconds, so it ends on the deadline, and the run stops
                                            # there (or at max_steps, whichever comes first). Not bit-for-bit
                                            # resumable: each step's lr depends on the clock
    checkpoint_interval: int = 250          # steps between checkpoints; 0 saves only at the end
    keep_checkpoints: int = 5               # newest checkpoints kept; 0 keeps all
    milestones: int = 0                     # also keep this many checkpoints spread over the run (the
                                            # pages' checkpoint scrubber shows the model learning); 0: none
    sample_interval: int = 0                # steps between printed samples; 0 disables
    sample_tokens: int = 200                # length of those samples
    divergence_factor: float = 3.0          # stop when loss > this x ln(vocab) (uniform guessing) or non-finite
    resume: bool = False                    # continue the run in out_dir; without it an existing run is refused
    mask_rate: float = 0.15                 # a masked LM (objective mlm): the share of positions it must predict,
                                            # each replaced 80 % by [MASK], 10 % by a random token, 10 % kept
                                            # (BERT's recipe: the model cannot tell which unmasked tokens to trust)

    def __post_init__(self):
        for name in ("batch_size", "grad_accum_steps", "max_steps", "eval_iters", "sample_tokens",
                     "bpe_vocab_size"):
            checks.integer(name, getattr(self, name), 1)
        for name in ("warmup_steps", "eval_interval", "checkpoint_interval", "keep_checkpoints",
                     "sample_interval", "threads", "milestones", "eval_batch_size"):
            checks.integer(name, getattr(self, name), 0)
        if self.lr_decay_steps is not None:
            checks.integer("lr_decay_steps", self.lr_decay_steps, 1)
        for name in ("min_lr", "weight_decay", "grad_clip", "divergence_factor", "max_seconds"):
            checks.number(name, getattr(self, name), 0.0)
        checks.number("learning_rate", self.learning_rate, 0.0, low_open=True)
        checks.choice("optimizer", self.optimizer, OPTIMIZERS)
        checks.number("muon_lr", self.muon_lr, 0.0, low_open=True)
        checks.number("muon_momentum", self.muon_momentum, 0.0, 1.0, high_open=True)
        checks.number("grokfast_alpha", self.grokfast_alpha, 0.0, 1.0, high_open=True)
        checks.number("grokfast_lambda", self.grokfast_lambda, 0.0)
        checks.number("mask_rate", self.mask_rate, 0.0, 1.0, low_open=True, high_open=True)
        checks.choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        checks.number("lr_hold", self.lr_hold, 0.0, 1.0, high_open=True)
        if self.task:
            from core.tasks import make_task     # the spec is checked here, where every other field is
            self.task = make_task(self.task).spec()
        elif self.full_batch:
            raise ConfigError("full_batch trains on a task's whole training set; a corpus has none: set a task "
                              "(e.g. modular-addition) or leave full_batch off")
        for name in ("eval_train", "exact_final_eval", "full_batch"):
            checks.choice(name, getattr(self, name), (True, False))
        if self.max_seconds and self.lr_decay_steps is not None:
            raise ConfigError(f"lr_decay_steps ({self.lr_decay_steps}) counts steps, but with max_seconds "
                              f"({self.max_seconds:g}) the decay ends on the deadline: drop one of them")
        checks.number("beta1", self.beta1, 0.0, 1.0, high_open=True)
        checks.number("beta2", self.beta2, 0.0, 1.0, high_open=True)
        checks.number("val_fraction", self.val_fraction, 0.0, 1.0, low_open=True, high_open=True)
        for name in ("out_dir", "corpus", "tokenizer", "dtype", "device"):
            setattr(self, name, checks.text(name, getattr(self, name)))
        if self.data_dir is not None:
            self.data_dir = checks.text("data_dir", self.data_dir)
        checks.choice("dtype", self.dtype, DTYPES)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# TrainConfig fields that may hold a path of the machine that trained (a shared card shortens them)
TRAIN_PATH_FIELDS = ("out_dir", "corpus", "data_dir", "tokenizer")

# Fields a resumed run may change: they do not alter the math of the steps already taken.
RESUMABLE_OVERRIDES = {"out_dir", "data_dir", "max_steps", "lr_decay_steps", "compile", "device",
                       "threads", "eval_interval", "eval_at_start", "checkpoint_interval", "keep_checkpoints",
                       "sample_interval", "sample_tokens", "resume", "milestones", "max_seconds", "eval_train",
                       "eval_batch_size",
                       "exact_final_eval"}


# ---------------------------------------------------------------------------------------------------
# Post-training (core.posttrain runs it; the Post-train page and the jobs plan it without torch)

POST_STAGES = ("sft", "reward", "dpo", "ppo", "grpo")
RL_STAGES = ("ppo", "grpo")             # the stages that sample rollouts and score them with a reward model
JUDGE_PREFIX = "judge:"


@dataclass
class PostTrainConfig:
    stage: str = "sft"                      # sft | reward | dpo | ppo | grpo
    base: str = ""                          # the model to start from: a run directory, a checkpoint file, an
                                            # exported model directory, or a Hugging Face checkpoint (its path or
                                            # cached id). DPO and PPO keep a frozen copy of it as the reference
    out_dir: str = "runs/posttrain"         # the new run's directory
    data: str = "judge:short-lines"         # a JSONL file (sft: prompt, response; reward and dpo: prompt, chosen,
                                            # rejected; ppo, grpo: prompt), or judge:<spec> to have the base model write
                                            # the examples and a programmatic judge (core.preferences) label them
    reward_model: str = ""                  # ppo, grpo: the reward run (stage reward) that scores the rollouts
    examples: int = 256                     # judge-made data: how many examples (pairs, demonstrations, prompts)
    held_out: float = 0.2                   # share of the examples kept aside for evaluation
    prompt_tokens: int = 8                  # judge-made prompts: tokens the base model writes after a newline
    response_tokens: int = 32               # judge-made responses and PPO rollouts: tokens per response
    best_of: int = 4                        # judge-made SFT: the judge's best of this many samples is the demonstration
    steps: int = 200                        # optimizer steps
    batch_size: int = 16                    # examples (or rollouts) per step
    learning_rate: float = 1e-4             # constant after a short warmup: fine-tuning moves a trained model a little
    warmup_steps: int = 10                  # linear warmup of the learning rate
    weight_decay: float = 0.0               # fine-tuning rarely decays (TRL's default 0)
    grad_clip: float = 1.0                  # max global grad norm; 0 disables
    beta: float = 0.1                       # DPO: the strength of the implicit KL to the reference (0.1 as in the
                                            # paper and TRL); PPO: the per-token KL penalty (TRL 0.05); GRPO: the
                                            # KL term's weight; 0 lets the policy exploit the reward model
    lora_rank: int = 0                      # 0 fine-tunes every weight; r > 0 trains LoRA adapters of rank r (PEFT)
                                            # on lora_targets instead, merged into the weights for export
    lora_alpha: float = 16.0                # LoRA's update is (alpha / rank) * B A
    lora_targets: str = "c_attn,c_proj,c_fc"    # the Linear layers to adapt, by name (comma-separated)
    ppo_epochs: int = 2                     # ppo, grpo: optimisation passes over each batch of rollouts
    group_size: int = 4                     # grpo: rollouts per prompt; each one's advantage is its reward against
                                            # its group's mean, in units of the group's spread (no value head)
    clip: float = 0.2                       # ppo, grpo: the probability-ratio clip (TRL's cliprange), and PPO's value clip
    value_coef: float = 0.1                 # ppo: the value loss's weight (TRL's vf_coef)
    gamma: float = 1.0                      # ppo: discount
    lam: float = 0.95                       # ppo: GAE's lambda
    temperature: float = 1.0                # sampling temperature of rollouts and judge-made examples
    eval_interval: int = 25                 # steps between evaluations on the held-out examples
    eval_samples: int = 16                  # held-out prompts the policy answers at each evaluation
    checkpoint_interval: int = 50           # steps between checkpoints; 0 saves only at the end
    keep_checkpoints: int = 3               # newest checkpoints kept; 0 keeps all
    seed: int = 1337                        # data, sampling and batch order: same seed, same run
    device: str = "auto"                    # auto (cuda when present, else cpu) | cpu | cuda
    resume: bool = False                    # continue the run in out_dir; without it an existing run is refused

    def __post_init__(self):
        checks.choice("stage", self.stage, POST_STAGES)
        for name in ("steps", "batch_size", "examples", "prompt_tokens", "response_tokens", "best_of", "ppo_epochs",
                     "eval_samples"):
            checks.integer(name, getattr(self, name), 1)
        for name in ("warmup_steps", "eval_interval", "checkpoint_interval", "keep_checkpoints", "lora_rank"):
            checks.integer(name, getattr(self, name), 0)
        checks.number("held_out", self.held_out, 0.0, 1.0, low_open=True, high_open=True)
        checks.number("learning_rate", self.learning_rate, 0.0, low_open=True)
        for name in ("beta", "weight_decay", "grad_clip", "value_coef"):
            checks.number(name, getattr(self, name), 0.0)
        checks.number("temperature", self.temperature, 0.0, low_open=True)
        checks.number("lora_alpha", self.lora_alpha, 0.0, low_open=True)
        checks.number("clip", self.clip, 0.0, 1.0, low_open=True, high_open=True)
        checks.number("gamma", self.gamma, 0.0, 1.0)
        checks.number("lam", self.lam, 0.0, 1.0)
        for name in ("base", "out_dir", "data", "reward_model", "lora_targets", "device"):
            setattr(self, name, checks.text(name, getattr(self, name)))
        if self.stage in RL_STAGES and not self.reward_model:
            raise ConfigError(f"{self.stage} needs --reward-model: a reward run (stage reward) to score its rollouts")
        if self.stage == "grpo" and not 2 <= self.group_size <= self.batch_size:
            raise ConfigError(f"group_size must be between 2 and batch_size ({self.batch_size}), not {self.group_size}: "
                              f"GRPO compares each rollout with the others of its group")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def judge(self) -> str | None:
        return self.data[len(JUDGE_PREFIX):] if self.data.startswith(JUDGE_PREFIX) else None


# Each post-training stage's preset for the committed character model (bench/posttrain.py measures them; each finishes in
# minutes on 2 CPU cores): the Post-train page starts from these, the CLI from the dataclass's defaults.
POST_PRESETS = {
    "sft": dict(examples=256, steps=100, batch_size=16, learning_rate=3e-5, response_tokens=48),
    "reward": dict(examples=512, steps=150, batch_size=32, learning_rate=3e-4, response_tokens=48),
    "dpo": dict(examples=512, steps=100, batch_size=16, learning_rate=5e-5, beta=0.1, response_tokens=48),
    "ppo": dict(examples=256, steps=100, batch_size=16, learning_rate=1e-4, beta=0.05, response_tokens=48),
    "grpo": dict(examples=256, steps=100, batch_size=16, group_size=4, learning_rate=1e-4, beta=0.05,
                 response_tokens=48),
}


def preset_config(stage: str, **overrides) -> PostTrainConfig:
    """The stage's preset (POST_PRESETS), with `overrides` on top."""
    checks.choice("stage", stage, POST_STAGES)
    return PostTrainConfig(stage=stage, **{**POST_PRESETS[stage], **overrides})


def post_data_kind(stage: str) -> str:
    """What a stage's data holds (core.preferences' kinds): sft (prompt, response), pairs (prompt, chosen,
    rejected), prompts (prompt: the RL stages write their own responses)."""
    checks.choice("stage", stage, POST_STAGES)
    return {"sft": "sft", "reward": "pairs", "dpo": "pairs", "ppo": "prompts", "grpo": "prompts"}[stage]
