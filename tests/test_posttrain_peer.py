"""Post-training (core.posttrain) checked against the peer, TRL: its DPOTrainer, RewardTrainer and SFTTrainer run
on the same weights and the same token ids as our stages, and PPO against TRL's own PPO formulas.

The models: a tiny GPT-2 built by transformers (tests.test_pretrained's `make_hf`, with its offline byte-level BPE
tokenizer) is the reference; the policy is a copy with every weight nudged by seeded noise. Both are saved with
`save_pretrained` and read twice: by transformers for TRL, by `core.pretrained.load_pretrained` for us. Our side
runs the stages' own code (`_DPO.losses`, `_Reward.scores`, `_SFT.evaluate`, `_PPO.rollout`, on a stage object
given only the attributes that code reads), never a copy of it.

What could differ, and is checked here: which tokens a summed log-prob counts (prompt masked out, padding, the
shift by one), the sign and scale of DPO's implicit rewards beta * (log pi - log ref) and their margins, where a
reward head is read (the last real token, not a pad), SFT's mean (over the batch's response tokens, not per row),
and PPO's per-token KL shaping, GAE, whitening and clipped losses.

Conventions that differ from TRL's, pinned here so they cannot drift unnoticed:
- TRL appends EOS to every text completion (DPO, reward, SFT) and scores it; our pairs carry no EOS (our responses
  are fixed-length samples that never stop). With EOS appended to our ids, the losses agree.
- A tokenizer that puts BOS first (Llama): TRL's prompt ids start with it, and so do ours (checked below).
- PPO sampled at a temperature T != 1: TRL's log-probs divide the logits by T + 1e-7, ours by T (this test found
  that ours once scored at T = 1 whatever they sampled at).
- GRPO's KL term: TRL 1.16 multiplies it by the ratio pi / pi_old by default (use_bias_correction_kl), and so does
  ours (this test found that ours once did not; its gradient then differed even on-policy).
Pitfall on the peer's side: TRL's configs default to bf16=True, even on CPU, and `accelerate` then runs the reference
model under bf16 autocast (1e-2 off); every config here sets bf16=False.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

trl = pytest.importorskip("trl")

from datasets import Dataset  # noqa: E402
from tokenizers import Tokenizer as RawTokenizer  # noqa: E402
from tokenizers.processors import TemplateProcessing  # noqa: E402
from transformers import (GPT2ForSequenceClassification, GPT2LMHeadModel, LlamaForCausalLM,  # noqa: E402
                          PreTrainedTokenizerFast)
from trl import (DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer, RewardConfig, RewardTrainer, SFTConfig,  # noqa: E402
                 SFTTrainer)

from core.posttrain import (_DPO, _GRPO, _PPO, _SFT, _Reward, PostTrainConfig, bradley_terry_loss,  # noqa: E402
                            dpo_loss, encode_pair_side, gae, group_advantages, grpo_loss, pad_batch, ppo_losses,
                            sequence_logprob, token_logprobs)
from core.preferences import Demonstration, PreferencePair  # noqa: E402
from core.pretrained import load_pretrained  # noqa: E402
from tests.test_pretrained import EOT, make_hf, save_tokenizer  # noqa: E402

BETA = 0.1            # DPO's beta, TRL's default and ours
TOLERANCE = 1e-4
# prompts end on a word and completions start with a space, so tokenizing prompt + completion together (TRL) and
# apart (encode_pair_side) gives the same ids: a byte-level BPE never merges across " word" boundaries
PAIRS = [
    ("The cat", " sat on the mat.", " ran."),
    ("A dog saw", " the bird.", " a big red house and then slept."),
    ("Then the small bird", " sat quickly.", " slowly ran over the garden and slept under the big house."),
    ("The", " red dog slept.", " dog"),
]


def trl_args(cls, tmp: Path, **kw):
    """A TRL config for computing losses on CPU: no reports, no bf16 autocast (TRL's default is bf16=True)."""
    return cls(output_dir=str(tmp), report_to="none", bf16=False, use_cpu=True, dataset_num_proc=None,
               per_device_train_batch_size=len(PAIRS), **kw)


def stage(cls, **attrs):
    """A stage object with only the attributes its loss code reads: that code runs as it is, nothing else."""
    s = object.__new__(cls)
    s.__dict__.update(device="cpu", **attrs)
    return s


@pytest.fixture(scope="module")
def peer(tmp_path_factory):
    """The reference and policy checkpoints, as transformers and as our models, and both tokenizers."""
    base = tmp_path_factory.mktemp("peer")
    ref_dir, pol_dir = base / "ref", base / "policy"
    n_vocab = save_tokenizer(ref_dir, eot_last=True)
    save_tokenizer(pol_dir, eot_last=True)
    ref = make_hf("gpt2", n_vocab, tie=True)
    ref.save_pretrained(ref_dir, safe_serialization=True)
    policy = copy.deepcopy(ref)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():                       # far enough from the reference for rewards of ~0.1-0.5
        for p in policy.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    policy.save_pretrained(pol_dir, safe_serialization=True)
    our_policy, tok, _ = load_pretrained(pol_dir)
    our_ref, _, _ = load_pretrained(ref_dir)
    return SimpleNamespace(ref_dir=ref_dir, pol_dir=pol_dir, tok=tok, policy=our_policy.eval(), ref=our_ref.eval(),
                           block=our_policy.config.block_size,
                           # a fresh one for each trainer: TRL sets a pad token on the tokenizer it is given
                           hf_tok=lambda: PreTrainedTokenizerFast.from_pretrained(ref_dir))


@pytest.fixture(scope="module")
def dpo_trainer(peer, tmp_path_factory):
    """TRL's DPOTrainer on the same policy and reference, given the pairs as text (so TRL tokenizes them itself)."""
    ds = Dataset.from_dict({k: [p[i] for p in PAIRS] for i, k in enumerate(("prompt", "chosen", "rejected"))})
    trainer = DPOTrainer(model=GPT2LMHeadModel.from_pretrained(peer.pol_dir),
                         ref_model=GPT2LMHeadModel.from_pretrained(peer.ref_dir),
                         args=trl_args(DPOConfig, tmp_path_factory.mktemp("dpo"), beta=BETA),
                         train_dataset=ds, processing_class=peer.hf_tok())
    trainer.model.eval()                      # no dropout; TRL logs under _metrics["eval"]
    return trainer


def trl_dpo(trainer, examples: list[dict]) -> tuple[float, dict[str, float]]:
    """TRL's DPO loss and logged metrics (batch means) for examples of prompt/chosen/rejected ids:
    DataCollatorForPreference, then DPOTrainer._compute_loss (trl/trainer/dpo_trainer.py)."""
    trainer._metrics["eval"].clear()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, trainer.data_collator(examples))
    return float(loss), {k: v[-1] for k, v in trainer._metrics["eval"].items()}


def split(row: tuple[list[int], int]) -> tuple[list[int], list[int]]:
    ids, n_prompt = row
    return ids[:n_prompt], ids[n_prompt:]


# ---------------------------------------------------------------------------------------------------
# DPO

def test_dpo_loss_rewards_and_margins_equal_trl(peer, dpo_trainer):
    """Our _DPO stage and TRL's DPOTrainer, same weights and same token ids (ours, split at our prompt length):
    the batch's loss and metrics, then each pair alone (TRL logs only batch means)."""
    dpo = stage(_DPO, policy=peer.policy, ref=peer.ref, tokenizer=peer.tok, block=peer.block,
                cfg=PostTrainConfig(stage="dpo", beta=BETA))
    pairs = [PreferencePair(*p) for p in PAIRS]
    with torch.no_grad():
        loss, chosen, rejected = dpo.losses(pairs)
        logp_chosen, logp_rejected = dpo.logps(peer.policy, pairs)
    examples = []
    for pair in pairs:
        (prompt, c), (_, r) = split(dpo.rows([pair], "chosen")[0]), split(dpo.rows([pair], "rejected")[0])
        examples.append({"prompt_ids": prompt, "chosen_ids": c, "rejected_ids": r})

    want_loss, m = trl_dpo(dpo_trainer, examples)
    ours = {"rewards/chosen": chosen.mean(), "rewards/rejected": rejected.mean(),
            "rewards/margins": (chosen - rejected).mean(), "rewards/accuracies": (chosen > rejected).float().mean(),
            "logps/chosen": logp_chosen.mean(), "logps/rejected": logp_rejected.mean()}
    assert abs(float(loss) - want_loss) < TOLERANCE
    for k, v in ours.items():
        assert abs(float(v) - m[k]) < TOLERANCE, k
    # not a trivial agreement: the policy is away from the reference, and rewards of both signs occur
    assert abs(want_loss - torch.log(torch.tensor(2.0)).item()) > 0.01
    rewards = torch.cat([chosen, rejected])
    assert (rewards.abs() > 0.02).all() and rewards.min() < 0 < rewards.max(), rewards

    # pair by pair: each implicit reward beta * (log pi - log ref), its sign included
    for i, ex in enumerate(examples):
        want_loss, m = trl_dpo(dpo_trainer, [ex])
        assert abs(m["rewards/chosen"] - float(chosen[i])) < TOLERANCE
        assert abs(m["rewards/rejected"] - float(rejected[i])) < TOLERANCE
        assert abs(m["logps/chosen"] - float(logp_chosen[i])) < TOLERANCE
        assert abs(m["logps/rejected"] - float(logp_rejected[i])) < TOLERANCE
        assert abs(want_loss - float(-F.logsigmoid(chosen[i] - rejected[i]))) < TOLERANCE


def test_the_summed_logprob_counts_the_tokens_trl_counts(peer, dpo_trainer):
    """The comparison above has the power to see a miscount: counting the prompt, or the mask off by one, moves
    the summed log-prob far beyond the tolerance, while ours matches TRL's to it."""
    rows = [encode_pair_side(peer.tok, p, c, peer.block, "pair") for p, c, _ in PAIRS]
    ids, mask, last = pad_batch(rows, "cpu")
    with torch.no_grad():
        logits = peer.policy(ids).logits
    per_token, ours = token_logprobs(logits, ids), sequence_logprob(logits, ids, mask)
    real = (torch.arange(ids.size(1))[None] <= last[:, None]).long()
    miscounts = {"prompt counted": (per_token * real[:, 1:]).sum(-1),
                 "mask unshifted": (per_token * mask[:, :-1]).sum(-1)}
    for i, (p, c, r) in enumerate(PAIRS):
        prompt, completion = split(rows[i])
        _, r_ids = split(encode_pair_side(peer.tok, p, r, peer.block, "pair"))
        _, m = trl_dpo(dpo_trainer, [{"prompt_ids": prompt, "chosen_ids": completion, "rejected_ids": r_ids}])
        assert abs(float(ours[i]) - m["logps/chosen"]) < TOLERANCE
        if len(prompt) == 1:
            continue          # a one-token prompt has no log-prob of its own to miscount
        for name, wrong in miscounts.items():
            assert abs(float(wrong[i]) - m["logps/chosen"]) > 100 * TOLERANCE, name


def test_trl_tokenizes_the_pairs_as_we_do_plus_eos(peer, dpo_trainer):
    """TRL tokenizes the text pairs itself: the same prompt ids as encode_pair_side, and the same completion ids
    with EOS appended (TRL's `add_eos` for non-conversational data; our responses carry none). With that EOS
    appended to our rows, our loss functions give TRL's loss on TRL's own batch."""
    eos = peer.tok.eot_id
    assert eos == peer.hf_tok().eos_token_id
    rows = {"chosen": [], "rejected": []}
    for i, (p, c, r) in enumerate(PAIRS):
        got = dpo_trainer.train_dataset[i]
        for side, text in (("chosen", c), ("rejected", r)):
            prompt, completion = split(encode_pair_side(peer.tok, p, text, peer.block, "pair"))
            assert got["prompt_ids"] == prompt
            assert got[f"{side}_ids"] == completion + [eos]
            rows[side].append((prompt + completion + [eos], len(prompt)))

    ids, mask, _ = pad_batch(rows["chosen"] + rows["rejected"], "cpu")
    with torch.no_grad():
        lp = sequence_logprob(peer.policy(ids).logits, ids, mask)
        ref = sequence_logprob(peer.ref(ids).logits, ids, mask)
    n = len(PAIRS)
    loss, chosen, rejected = dpo_loss(lp[:n], lp[n:], ref[:n], ref[n:], BETA)
    want_loss, m = trl_dpo(dpo_trainer, [dpo_trainer.train_dataset[i] for i in range(n)])
    assert abs(float(loss) - want_loss) < TOLERANCE
    assert abs(float((chosen - rejected).mean()) - m["rewards/margins"]) < TOLERANCE


def bos_checkpoint(directory: Path) -> Path:
    """A Llama checkpoint whose tokenizer puts BOS first, as Llama's does (a TemplateProcessing post-processor)."""
    n_vocab = save_tokenizer(directory, eot_last=False)
    raw = RawTokenizer.from_file(str(directory / "tokenizer.json"))
    bos = raw.token_to_id(EOT)
    raw.post_processor = TemplateProcessing(single=f"{EOT} $A", pair=f"{EOT} $A {EOT} $B", special_tokens=[(EOT, bos)])
    PreTrainedTokenizerFast(tokenizer_object=raw, eos_token=EOT, bos_token=EOT).save_pretrained(directory)
    make_hf("llama", n_vocab, tie=False).save_pretrained(directory, safe_serialization=True)
    return directory


@pytest.fixture(scope="module")
def bos_case(tmp_path_factory):
    directory = bos_checkpoint(tmp_path_factory.mktemp("llama-bos"))
    model, tok, _ = load_pretrained(directory)
    ds = Dataset.from_dict({k: [p[i] for p in PAIRS] for i, k in enumerate(("prompt", "chosen", "rejected"))})
    trainer = DPOTrainer(model=LlamaForCausalLM.from_pretrained(directory),
                         ref_model=LlamaForCausalLM.from_pretrained(directory),
                         args=trl_args(DPOConfig, tmp_path_factory.mktemp("dpo-bos"), beta=BETA),
                         train_dataset=ds, processing_class=PreTrainedTokenizerFast.from_pretrained(directory))
    return tok, model.config.block_size, trainer.train_dataset


def test_a_bos_tokenizer_prompt_starts_with_bos_as_in_trl(bos_case):
    """Where the checkpoint's tokenizer puts BOS first (Llama), TRL's prompt ids start with it, and so do
    encode_pair_side's (through `Tokenizer.encode_prompt`); the completions are ours plus TRL's EOS."""
    tok, block, rows = bos_case
    assert tok.add_bos and tok.bos_id is not None
    for i, (p, c, _) in enumerate(PAIRS):
        prompt, completion = split(encode_pair_side(tok, p, c, block, "pair"))
        assert prompt[0] == tok.bos_id
        assert rows[i]["prompt_ids"] == prompt
        assert rows[i]["chosen_ids"] == completion + [tok.eot_id]


# ---------------------------------------------------------------------------------------------------
# Reward model (Bradley-Terry)

class FixedRewards(torch.nn.Module):
    """A stand-in sequence classifier whose rewards are given: TRL's loss on exactly these numbers."""

    def __init__(self, rewards: torch.Tensor):
        super().__init__()
        self.rewards = rewards

    def forward(self, **_):
        return SimpleNamespace(logits=self.rewards[:, None])


@pytest.fixture(scope="module")
def reward_case(peer, tmp_path_factory):
    """A reward head on the policy's trunk: ours (a bias-free Linear, as core.posttrain._head) and transformers'
    GPT2ForSequenceClassification (its `score`, also bias-free), with the same seeded weights."""
    head = torch.nn.Linear(peer.policy.config.n_embd, 1, bias=False)
    torch.nn.init.normal_(head.weight, std=1.0, generator=torch.Generator().manual_seed(3))
    hf = GPT2ForSequenceClassification.from_pretrained(peer.pol_dir, num_labels=1)
    with torch.no_grad():
        hf.score.weight.copy_(head.weight)
    rows = {"chosen": [encode_pair_side(peer.tok, p, c, peer.block, "pair")[0] for p, c, _ in PAIRS],
            "rejected": [encode_pair_side(peer.tok, p, r, peer.block, "pair")[0] for p, _, r in PAIRS]}
    # pre-tokenized (chosen_ids, rejected_ids): TRL takes them as they are, no EOS added, so the ids are ours
    trainer = RewardTrainer(model=hf, args=trl_args(RewardConfig, tmp_path_factory.mktemp("reward")),
                            train_dataset=Dataset.from_dict({"chosen_ids": rows["chosen"],
                                                             "rejected_ids": rows["rejected"]}),
                            processing_class=peer.hf_tok())
    trainer.model.eval()
    return head, trainer


def test_bradley_terry_equals_trl_reward_loss_on_fixed_rewards(reward_case):
    """bradley_terry_loss against RewardTrainer.compute_loss (trl/trainer/reward_trainer.py) on given rewards,
    margins of +60 and -70 included (logsigmoid, not log(sigmoid), on both sides)."""
    _, trainer = reward_case
    chosen = torch.tensor([2.0, -1.5, 30.0, -40.0, 0.0, 0.25])
    rejected = torch.tensor([1.0, 0.5, -30.0, 30.0, 0.0, 0.75])
    with torch.no_grad():
        want = trainer.compute_loss(FixedRewards(torch.cat([chosen, rejected])),
                                    {"attention_mask": torch.ones(12, 3, dtype=torch.long)})
    got = bradley_terry_loss(chosen, rejected)
    assert torch.isfinite(got) and abs(float(got) - float(want)) < 1e-6


def test_reward_model_reads_the_last_real_token_as_trl(peer, reward_case):
    """Our _Reward stage (pad_batch + score at each row's last token) and TRL's RewardTrainer on
    GPT2ForSequenceClassification (the score at the last non-pad token), same trunk, head and ids."""
    head, trainer = reward_case
    reward = stage(_Reward, policy=peer.policy, head=head, tokenizer=peer.tok, block=peer.block)
    pairs = [PreferencePair(*p) for p in PAIRS]
    with torch.no_grad():
        chosen, rejected = reward.scores(pairs)
        loss = bradley_terry_loss(chosen, rejected)
        trainer._metrics["eval"].clear()
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(PAIRS))])
        want_loss, out = trainer.compute_loss(trainer.model, batch, return_outputs=True)
    want_chosen, want_rejected = out.logits.squeeze(-1).chunk(2)
    m = {k: v[-1] for k, v in trainer._metrics["eval"].items()}
    assert (chosen - want_chosen).abs().max() < TOLERANCE and (rejected - want_rejected).abs().max() < TOLERANCE
    assert abs(float(loss) - float(want_loss)) < TOLERANCE
    assert abs(float((chosen - rejected).mean()) - m["margin"]) < TOLERANCE
    assert float((chosen > rejected).float().mean()) == m["accuracy"]
    assert (chosen - rejected).abs().min() > 0.05           # rewards that tell the pairs apart
    # the padded rows: a head read one token early (or at a pad) would not match
    ids, _, last = pad_batch([encode_pair_side(peer.tok, p, c, peer.block, "pair") for p, c, _ in PAIRS], "cpu")
    assert (last < ids.size(1) - 1).any()


# ---------------------------------------------------------------------------------------------------
# SFT

def test_sft_loss_equals_trl_completion_only_loss(peer, tmp_path_factory):
    """Our _SFT stage's loss and SFTTrainer.compute_loss (completion_only_loss, trl/trainer/sft_trainer.py) on the
    same pre-tokenized rows: cross-entropy averaged over all the batch's response tokens, the prompt left out."""
    demos = [Demonstration(p, c) for p, c, _ in PAIRS]
    sft = stage(_SFT, policy=peer.policy, tokenizer=peer.tok, block=peer.block, held=demos, step=0)
    with torch.no_grad():
        ours = sft.evaluate().metrics["loss"]
    rows = [encode_pair_side(peer.tok, d.prompt, d.response, peer.block, "demo") for d in demos]
    ds = Dataset.from_dict({"input_ids": [ids for ids, _ in rows],
                            "completion_mask": [[0] * n + [1] * (len(ids) - n) for ids, n in rows]})
    trainer = SFTTrainer(model=GPT2LMHeadModel.from_pretrained(peer.pol_dir),
                         args=trl_args(SFTConfig, tmp_path_factory.mktemp("sft"), completion_only_loss=True),
                         train_dataset=ds, processing_class=peer.hf_tok())
    trainer.model.eval()
    with torch.no_grad():
        want = trainer.compute_loss(trainer.model, trainer.data_collator([trainer.train_dataset[i]
                                                                          for i in range(len(rows))]))
    assert abs(ours - float(want)) < TOLERANCE
    # a per-row mean (each row's response averaged, then the rows) would differ: the rows' lengths differ
    ids, mask, _ = pad_batch(rows, "cpu")
    with torch.no_grad():
        nll = -token_logprobs(peer.policy(ids).logits, ids) * mask[:, 1:]
    per_row = float((nll.sum(-1) / mask[:, 1:].sum(-1)).mean())
    assert abs(per_row - float(want)) > 100 * TOLERANCE


# ---------------------------------------------------------------------------------------------------
# PPO. TRL 1.16 ships no PPO (trl.experimental has none either), so there is nothing of TRL's to call. Checked
# against TRL's own PPO formulas, written out here from huggingface/trl trl/experimental/ppo/ppo_trainer.py
# (PPOTrainer.train: "4. compute rewards", "6. compute advantages and returns", the clipped losses) and
# trl/trainer/utils.py (masked_whiten), as last published, with no padding in the responses.

def trl_masked_whiten(values: torch.Tensor) -> torch.Tensor:
    """TRL's masked_whiten over an all-true mask: unbiased variance, rsqrt(var + 1e-8)."""
    mean = values.mean()
    var = ((values - mean) ** 2).mean() * values.numel() / (values.numel() - 1)
    return (values - mean) * torch.rsqrt(var + 1e-8)


def trl_gae(rewards, values, gamma, lam):
    lastgaelam = 0
    advantages_reversed = []
    gen_length = rewards.shape[1]
    for t in reversed(range(gen_length)):
        nextvalues = values[:, t + 1] if t < gen_length - 1 else 0.0
        delta = rewards[:, t] + gamma * nextvalues - values[:, t]
        lastgaelam = delta + gamma * lam * lastgaelam
        advantages_reversed.append(lastgaelam)
    advantages = torch.stack(advantages_reversed[::-1], axis=1)
    return advantages, advantages + values


def trl_ppo_losses(new_logprobs, logprobs, advantages, vpred, values, returns, cliprange, cliprange_value):
    vpredclipped = torch.clamp(vpred, values - cliprange_value, values + cliprange_value)
    vf_loss = 0.5 * torch.max(torch.square(vpred - returns), torch.square(vpredclipped - returns)).mean()
    ratio = torch.exp(new_logprobs - logprobs)
    pg_losses = -advantages * ratio
    pg_losses2 = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    pg_loss = torch.max(pg_losses, pg_losses2).mean()
    pg_clipfrac = (pg_losses2 > pg_losses).float().mean()
    return pg_loss, vf_loss, float(pg_clipfrac)


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8)])
def test_gae_and_ppo_losses_equal_trl_formulas(gamma, lam):
    g = torch.Generator().manual_seed(11)
    B, R, clip = 5, 9, 0.2
    rewards, values = torch.randn(B, R, generator=g), torch.randn(B, R, generator=g)
    adv, returns = gae(rewards, values, gamma, lam)
    want_adv, want_returns = trl_gae(rewards, values, gamma, lam)
    assert (adv - want_adv).abs().max() < 1e-5 and (returns - want_returns).abs().max() < 1e-5

    old_lp = -torch.rand(B, R, generator=g) * 3
    lp = old_lp + torch.randn(B, R, generator=g) * 0.3               # ratios from ~0.4 to ~2.5: many clipped
    new_values = values + torch.randn(B, R, generator=g) * 0.3        # some past the value clip
    pg, vf, clip_fraction = ppo_losses(lp, old_lp, adv, new_values, values, returns, clip)
    want_pg, want_vf, trl_clipfrac = trl_ppo_losses(lp, old_lp, adv, new_values, values, returns, clip, clip)
    assert abs(float(pg - want_pg)) < 1e-6 and abs(float(vf - want_vf)) < 1e-6
    # the clip fraction is a metric, not a loss, and the two define it differently: ours is the share of ratios
    # outside [1 - clip, 1 + clip] (OpenAI baselines' clipfrac), TRL's pg_clipfrac the share where the clipped
    # term is the one taken, about half of those; ours is never below TRL's
    ratio = torch.exp(lp - old_lp)
    assert clip_fraction == pytest.approx(float(((ratio - 1).abs() > clip).float().mean()))
    assert 0 < trl_clipfrac < clip_fraction


@pytest.fixture(scope="module")
def ppo_models(peer):
    """transformers' side of a rollout: the policy and reference LMs, the value model (the policy's trunk with
    our value head as `score`, TRL's get_reward reading every position) and the reward model (the reference's
    trunk with our reward head, read at the last token)."""
    g = torch.Generator().manual_seed(5)
    value_head = torch.nn.Linear(peer.policy.config.n_embd, 1, bias=False)
    reward_head = torch.nn.Linear(peer.policy.config.n_embd, 1, bias=False)
    torch.nn.init.normal_(value_head.weight, std=0.5, generator=g)
    torch.nn.init.normal_(reward_head.weight, std=1.0, generator=g)
    value_model = GPT2ForSequenceClassification.from_pretrained(peer.pol_dir, num_labels=1).eval()
    reward_model = GPT2ForSequenceClassification.from_pretrained(peer.ref_dir, num_labels=1).eval()
    with torch.no_grad():
        value_model.score.weight.copy_(value_head.weight)
        reward_model.score.weight.copy_(reward_head.weight)
    return SimpleNamespace(value_head=value_head, reward_head=reward_head, value_model=value_model,
                           reward_model=reward_model, policy=GPT2LMHeadModel.from_pretrained(peer.pol_dir).eval(),
                           ref=GPT2LMHeadModel.from_pretrained(peer.ref_dir).eval())


def rollout_and_trl(peer, models, temperature: float) -> tuple[dict, dict]:
    """_PPO.rollout on four prompts, and TRL's PPO quantities on the ids it sampled: log-probs of the policy and
    the reference at the sampling temperature (logits / (T + 1e-7)), the value model read before each response
    token (`full_value[:, context_length - 1 : -1]`), the reward model's score at the last token, per-token rewards
    -kl_coef * (logp - ref_logp) (the k1 estimator) with the score added at the last response token, GAE, and
    the advantages whitened over the batch."""
    R, beta = 8, 0.05                                             # TRL's kl_coef default 0.05
    cfg = PostTrainConfig(stage="ppo", reward_model="(not read)", response_tokens=R, beta=beta,
                          temperature=temperature)
    ppo = stage(_PPO, cfg=cfg, policy=peer.policy, ref=peer.ref, tokenizer=peer.tok,
                head=models.value_head, reward_model=peer.ref, reward_head=models.reward_head,
                g=torch.Generator().manual_seed(cfg.seed + 2))
    prompts = ["The cat sat", "A dog ran", "A red house", "The small dog"]
    P = len(peer.tok.encode_prompt(prompts[0]))
    assert all(len(peer.tok.encode_prompt(p)) == P for p in prompts)   # one context length, as TRL's padded queries
    with torch.no_grad():
        b = ppo.rollout(prompts)
    query_response = b["ids"]
    assert query_response.shape == (len(prompts), P + R)
    # TRL takes the pad id (its EOS, as no pad is set) in a response as the response's end; these hold none, so
    # all R tokens count, as in our fixed-length rollouts
    assert (query_response[:, P:] != peer.tok.eot_id).all()

    response = query_response[:, P:]
    with torch.no_grad():
        def logprobs(model):
            logits = model(query_response).logits[:, P - 1:-1] / (temperature + 1e-7)
            return torch.gather(F.log_softmax(logits, dim=-1), 2, response[..., None]).squeeze(-1)

        logprob, ref_logprob = logprobs(models.policy), logprobs(models.ref)
        value = models.value_model.score(models.value_model.transformer(query_response).last_hidden_state)
        value = value[:, P - 1:-1, 0]
        score = models.reward_model.score(models.reward_model.transformer(query_response).last_hidden_state)[:, -1, 0]
    logr = ref_logprob - logprob
    kl = -logr                                                     # k1
    rewards = -beta * kl
    rewards[:, R - 1] += score                                     # actual_end: the last response token
    advantages, returns = trl_gae(rewards, value, cfg.gamma, cfg.lam)
    return b, dict(logprob=logprob, value=value, score=score, kl=kl, returns=returns, beta=beta,
                   advantages=trl_masked_whiten(advantages))


def test_ppo_rollout_follows_trl(peer, ppo_models):
    """_PPO.rollout's log-probs, values, score, KL, returns and advantages against TRL's PPO on the same ids: the
    sign of the KL shaping, where the score lands, GAE and whitening, all at once."""
    b, want = rollout_and_trl(peer, ppo_models, 1.0)
    assert (b["old_lp"] - want["logprob"]).abs().max() < TOLERANCE
    assert (b["old_values"] - want["value"]).abs().max() < TOLERANCE
    assert (b["score"] - want["score"]).abs().max() < TOLERANCE
    assert (b["kl"] - want["kl"].sum(1)).abs().max() < TOLERANCE
    assert (b["returns"] - want["returns"]).abs().max() < TOLERANCE
    assert (b["adv"] - want["advantages"]).abs().max() < 1e-3      # whitened: unit scale, eps placed differently
    # the KL shaping matters here (so its sign is checked): beta * KL is not lost beside the score
    assert (want["beta"] * want["kl"]).abs().max() > 100 * TOLERANCE and want["score"].abs().min() > 0.01


def test_ppo_rollout_logprobs_at_the_sampling_temperature_as_trl(peer, ppo_models):
    b, want = rollout_and_trl(peer, ppo_models, 0.7)
    assert (b["old_lp"] - want["logprob"]).abs().max() < TOLERANCE


# ---------------------------------------------------------------------------------------------------
# GRPO, against TRL 1.16's GRPOTrainer (trl/trainer/grpo_trainer.py), its own code run on our numbers, nothing
# transcribed: the advantages come out of GRPOTrainer._generate_and_score_completions (fed our token ids through its
# `rollout_func` hook and the rewards through a reward function), the loss and its metrics out of
# GRPOTrainer._compute_loss, the log-probs out of the fused LM head TRL puts on the models (at its temperature).
#
# TRL 1.16's defaults, pinned below: scale_rewards "group" (advantage (r - group mean) / (group std + 1e-4), the std
# with Bessel's correction, as ours); epsilon 0.2 on both sides (epsilon_high None, delta None), ratios per token
# (importance_sampling_level "token"); loss_type "dapo" (the per-token losses summed over the batch, over the batch's
# count of completion tokens). Our responses all have exactly response_tokens tokens, no padding and no EOS cut, so
# "dapo", "bnpo" (the same token mean, per local batch), "grpo" (each sequence's mean, then their mean) and "dr_grpo"
# (the sum over B * max_completion_length, with max_completion_length = response_tokens) are one number, ours; all
# four are checked. With responses of unequal length they would part. TRL's beta defaults to 0 (no reference
# model); ours is > 0, so the KL term is set here.

GROUP = 4                     # rollouts per prompt: TRL's num_generations, our group_size
R_GRPO = 6                    # response tokens: our response_tokens, TRL's max_completion_length
BETA_GRPO = 0.05              # our GRPO preset's beta
CLIP = 0.2                    # our clip, TRL's epsilon
ADV_SCORES = torch.tensor([
    1.0, 2.0, 0.5, -1.0,                # unequal rewards
    0.3, 0.3, 0.3, 0.3,                 # one reward for the whole group: std 0, every advantage 0
    0.2, 0.2, 0.20001, 0.2,             # a spread of 5e-6, below the 1e-4 epsilon: where the epsilon sits shows
    30.0, -30.0, 30.0, -30.0,           # a wide spread
])
GRPO_PROMPTS = ["The cat sat", "A dog ran", "A red house", "The small dog"]      # of one token length


@pytest.fixture(scope="module")
def grpo_trainers(peer, tmp_path_factory):
    """TRL's GRPOTrainer on the policy checkpoint, one per sampling temperature (the fused LM head it adds to the
    models takes its temperature when the trainer is built), in eval mode (no dropout; TRL logs under "eval" and
    normalises by no accumulation steps). TRL builds its reference model itself, from the policy's `_name_or_path`
    (its reference is the policy it starts from); that is pointed at the reference checkpoint here, so that, as in
    our stage, the reference is the base and the policy is away from it."""
    feed = {}

    def rollout_func(prompts, trainer):          # TRL's hook for completions made elsewhere: ours, as given
        assert len(prompts) == len(feed["completion_ids"])
        return {"prompt_ids": feed["prompt_ids"], "completion_ids": feed["completion_ids"], "logprobs": None}

    def reward(prompts, completions, completion_ids, score, **_):      # the rewards, a column of the inputs
        return [float(s) for s in score]

    made = {}

    def make(temperature: float = 1.0) -> GRPOTrainer:
        if temperature not in made:
            policy = GPT2LMHeadModel.from_pretrained(peer.pol_dir)
            policy.config._name_or_path = str(peer.ref_dir)
            args = GRPOConfig(output_dir=str(tmp_path_factory.mktemp("grpo")), report_to="none", bf16=False,
                              use_cpu=True, beta=BETA_GRPO, epsilon=CLIP, num_generations=GROUP,
                              per_device_train_batch_size=2 * GROUP, per_device_eval_batch_size=2 * GROUP,
                              max_completion_length=R_GRPO, temperature=temperature)   # TRL's defaults otherwise
            with warnings.catch_warnings():       # "rollout_func is experimental"
                warnings.simplefilter("ignore", UserWarning)
                trainer = GRPOTrainer(model=policy, reward_funcs=reward, args=args, processing_class=peer.hf_tok(),
                                      train_dataset=Dataset.from_dict({"prompt": ["x"] * 2 * GROUP}),
                                      rollout_func=rollout_func)
            trainer.model.eval()
            made[temperature] = trainer
        return made[temperature]

    return SimpleNamespace(make=make, feed=feed)


def trl_grpo_batch(trainers, trainer, prompt_ids: list, completion_ids: list, scores) -> dict:
    """GRPOTrainer._generate_and_score_completions on given rollouts (consecutive groups, as its RepeatSampler
    lays them out and as our train_step does) and rewards: its reference log-probs and advantages."""
    trainers.feed.update(prompt_ids=prompt_ids, completion_ids=completion_ids)
    trainer._metrics["eval"].clear()
    with torch.no_grad():
        return trainer._generate_and_score_completions([{"prompt": "x", "score": float(s)} for s in scores])


def test_trl_grpo_defaults_are_the_ones_compared_with():
    fields = GRPOConfig.__dataclass_fields__
    assert fields["loss_type"].default == "dapo" and fields["scale_rewards"].default == "group"
    assert fields["epsilon"].default == CLIP and fields["epsilon_high"].default is None
    assert fields["delta"].default is None and fields["importance_sampling_level"].default == "token"
    assert fields["beta"].default == 0.0 and fields["temperature"].default == 1.0
    assert fields["use_bias_correction_kl"].default is True      # ours too: the KL weighted by pi / pi_old


def test_group_advantages_equal_trl(grpo_trainers, monkeypatch):
    """group_advantages against the advantages GRPOTrainer._generate_and_score_completions computes from the same
    rewards (scale_rewards="group", TRL's default): unequal rewards, a group of equal rewards (std 0: advantages 0,
    not NaN), a spread below the epsilon, a wide spread. Ours has no scale_rewards option: TRL's "batch" (one std
    over the batch) and "none" (no division) give other numbers, shown so."""
    trainer = grpo_trainers.make()
    n = len(ADV_SCORES)
    args = (grpo_trainers, trainer, [[5, 6, 7]] * n, [list(range(10, 10 + R_GRPO))] * n, ADV_SCORES)
    out = trl_grpo_batch(*args)
    ours = group_advantages(ADV_SCORES, GROUP)
    assert torch.isfinite(ours).all() and (ours - out["advantages"]).abs().max() < 1e-5
    assert (ours[4:8] == 0).all() and trainer._metrics["eval"]["frac_reward_zero_std"][-1] == 0.25
    assert 0.05 < ours[10] < 0.1          # 7.5e-6 / (5e-6 + 1e-4): the epsilon outside the square root, as TRL's
    for other in ("batch", "none"):
        monkeypatch.setattr(trainer, "scale_rewards", other)
        assert (ours - trl_grpo_batch(*args)["advantages"]).abs().max() > 0.1, other


def loss_cases(seed: int = 13) -> tuple[torch.Tensor, ...]:
    """Per-token log-probs (B, R) of the policy, the sampler and the reference, and group advantages: ratios from
    ~0.4 to ~2.5 (clipped both ways, advantages of both signs and 0), the reference well away (KL ~0.1 a token)."""
    g = torch.Generator().manual_seed(seed)
    B = len(ADV_SCORES)
    lp = -torch.rand(B, R_GRPO, generator=g) * 3
    old = lp + torch.randn(B, R_GRPO, generator=g) * 0.3
    ref = lp + torch.randn(B, R_GRPO, generator=g) * 0.5
    return lp, old, ref, group_advantages(ADV_SCORES, GROUP)


def trl_grpo_loss(trainer, monkeypatch, lp, old, ref, adv, loss_type="dapo", beta=BETA_GRPO):
    """GRPOTrainer._compute_loss on given log-probs, its model call stood in for by one returning them (as
    FixedRewards above): TRL's loss, the gradient of it with respect to the policy's log-probs, TRL's metrics."""
    lp = lp.detach().clone().requires_grad_(True)
    ones = torch.ones_like(lp, dtype=torch.long)
    inputs = {"prompt_ids": ones[:, :2], "prompt_mask": ones[:, :2], "completion_ids": ones, "completion_mask": ones,
              "advantages": adv, "num_items_in_batch": ones.sum(), "old_per_token_logps": old,
              "ref_per_token_logps": ref}
    monkeypatch.setattr(trainer, "_get_per_token_logps_and_entropies", lambda *a, **k: (lp, torch.ones_like(lp), None))
    monkeypatch.setattr(trainer, "loss_type", loss_type)
    monkeypatch.setattr(trainer, "beta", beta)
    trainer._metrics["eval"].clear()
    loss = trainer._compute_loss(trainer.model, inputs)
    loss.backward()
    return float(loss), lp.grad, {k: v[-1] for k, v in trainer._metrics["eval"].items()}


def our_grpo_loss(lp, old, ref, adv, beta=BETA_GRPO):
    lp = lp.detach().clone().requires_grad_(True)
    loss, kl, clip_fraction = grpo_loss(lp, old, ref, adv, beta, CLIP)
    loss.backward()
    return float(loss), lp.grad, float(kl), clip_fraction


@pytest.mark.parametrize("beta", [0.0, 0.1])
@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "bnpo", "dr_grpo"])
def test_grpo_loss_equals_trl_compute_loss(grpo_trainers, monkeypatch, loss_type, beta):
    """grpo_loss against GRPOTrainer._compute_loss on the same log-probs and advantages, for each of TRL's four
    averaging loss types: the clipped surrogate, the k3 KL exp(ref - logp) - (ref - logp) - 1, the mean; the loss and
    its gradient with respect to the policy's log-probs (what training follows), with TRL's default KL bias
    correction (the k3 term weighted by pi / pi_old) as ours."""
    trainer = grpo_trainers.make()
    lp, old, ref, adv = loss_cases()
    want, want_grad, m = trl_grpo_loss(trainer, monkeypatch, lp, old, ref, adv, loss_type, beta)
    loss, grad, kl, clip_fraction = our_grpo_loss(lp, old, ref, adv, beta)
    assert abs(loss - want) < 1e-6 and (grad - want_grad).abs().max() < 1e-7
    # the clip fraction: ours is the share of ratios outside [1 - clip, 1 + clip], TRL's clip_ratio/region_mean the
    # share where the clipped term is the one taken (the advantage's sign decides), a part of those
    ratio = torch.exp(lp - old)
    assert clip_fraction == pytest.approx(float(((ratio - 1).abs() > CLIP).float().mean()))
    assert m["clip_ratio/low_mean"] > 0 and m["clip_ratio/high_mean"] > 0
    assert m["clip_ratio/region_mean"] < clip_fraction
    if beta:
        assert abs(kl - m["kl"]) < 1e-6
        # the power to see the KL's direction: k3 with (logp - ref) in place of (ref - logp) is 2e-3 off
        d = lp - ref
        flipped = loss - beta * float(((torch.exp(-d) + d - 1) - (torch.exp(d) - d - 1)).mean())
        assert abs(flipped - want) > 1000 * 1e-6


@pytest.mark.parametrize("on_policy", [True, False])
def test_grpo_kl_term_as_trl_default_bias_corrected_kl(grpo_trainers, monkeypatch, on_policy):
    """With TRL's default, per_token_kl = k3 * exp(logp - old_logp) (grpo_trainer.py, _compute_loss, "Importance
    sampling correction for the KL divergence"), and ours. On-policy the ratio is 1 and the losses agree either
    way, but the KL's gradient with respect to logp is beta * (logp - ref) per token (over B * R) with the weight,
    beta * (1 - exp(ref - logp)) without: on these cases, at beta 0.05, per-token gradients of 3e-3 to 1e-2 that
    differ by up to 3.7e-4, which this test sees. Off-policy the losses part too (0.04394 without, 0.04447 with)."""
    trainer = grpo_trainers.make()
    monkeypatch.setattr(trainer.args, "use_bias_correction_kl", True)
    lp, old, ref, adv = loss_cases()
    if on_policy:
        old = lp
    want, want_grad, m = trl_grpo_loss(trainer, monkeypatch, lp, old, ref, adv)
    loss, grad, kl, _ = our_grpo_loss(lp, old, ref, adv)
    assert abs(loss - want) < 1e-6
    assert (grad - want_grad).abs().max() < 1e-7


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_grpo_rollout_and_train_step_follow_trl(peer, ppo_models, grpo_trainers, temperature):
    """_GRPO.train_step (its own rollout, on a stage object given only what it reads, the optimizer step stood in
    for by one recording the loss) against GRPOTrainer on the ids it sampled: the policy's and the reference's
    log-probs at the sampling temperature, the rewards (transformers' reward model: the reference's trunk with our
    reward head, read at the last token), the group advantages, and the loss with its KL and entropy metrics. The
    rollout's old log-probs are moved off-policy (as after an update: ratios outside the clip range) for both."""
    cfg = PostTrainConfig(stage="grpo", reward_model="(not read)", response_tokens=R_GRPO, beta=BETA_GRPO, clip=CLIP,
                          temperature=temperature, group_size=GROUP, batch_size=2 * GROUP, ppo_epochs=1)
    losses, seen = [], {}
    grpo = stage(_GRPO, cfg=cfg, policy=peer.policy, ref=peer.ref, tokenizer=peer.tok, reward_model=peer.ref,
                 reward_head=ppo_models.reward_head, judge=None, step=0, g=torch.Generator().manual_seed(cfg.seed + 2),
                 rng=np.random.default_rng(cfg.seed + 1), train_data=[Demonstration(p, "") for p in GRPO_PROMPTS],
                 backward_step=lambda loss: losses.append(loss.detach()) or 0.0)

    def rollout(prompts):
        b = _GRPO.rollout(grpo, prompts)
        noise = torch.randn(b["old_lp"].shape, generator=torch.Generator().manual_seed(17)) * 0.3
        seen.update(b, prompts=prompts, sampled_lp=b["old_lp"])
        seen["old_lp"] = b["old_lp"] + noise
        return {**b, "old_lp": seen["old_lp"]}

    grpo.rollout = rollout
    loss, m = grpo.train_step()
    assert len(losses) == 1 and loss == float(losses[0])
    ids = seen["ids"]
    P = ids.size(1) - R_GRPO
    assert all(len(peer.tok.encode_prompt(p)) == P for p in seen["prompts"])    # no left padding on TRL's side
    firsts = seen["prompts"][::GROUP]
    assert seen["prompts"] == [q for q in firsts for _ in range(GROUP)]      # consecutive groups, as TRL's

    trainer = grpo_trainers.make(temperature)
    rm = ppo_models.reward_model
    with torch.no_grad():
        scores = rm.score(rm.transformer(ids).last_hidden_state)[:, -1, 0]
        out = trl_grpo_batch(grpo_trainers, trainer, ids[:, :P].tolist(), ids[:, P:].tolist(), scores)
        policy_lp, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, torch.ones_like(ids), R_GRPO)
    assert (scores - seen["score"]).abs().max() < TOLERANCE
    assert (policy_lp - seen["sampled_lp"]).abs().max() < TOLERANCE
    assert (out["ref_per_token_logps"] - seen["ref_lp"]).abs().max() < TOLERANCE
    assert (out["advantages"] - seen["adv"]).abs().max() < 1e-5

    out["old_per_token_logps"] = seen["old_lp"]
    trainer._metrics["eval"].clear()
    with torch.no_grad():
        want = float(trainer._compute_loss(trainer.model, out))
    tm = {k: v[-1] for k, v in trainer._metrics["eval"].items()}
    assert abs(loss - want) < 1e-5
    assert abs(m["kl_k3_per_token"] - tm["kl"]) < 1e-5
    assert abs(m["entropy"] - tm["entropy"]) < 1e-5
    assert m["clip_fraction"] > tm["clip_ratio/region_mean"] > 0
    # not a trivial agreement: rewards that differ within each group, a KL term beside them
    assert seen["score"].view(-1, GROUP).std(1).min() > 0.01 and BETA_GRPO * tm["kl"] > 100 * TOLERANCE
    if temperature != 1.0:                # TRL scores at the sampling temperature, and so do we, not at 1
        with torch.no_grad():
            at_one = token_logprobs(peer.policy(ids).logits, ids).gather(1, seen["where"])
        assert (at_one - seen["sampled_lp"]).abs().max() > 100 * TOLERANCE
