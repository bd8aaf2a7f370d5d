"""Post-training (core.posttrain, core.preferences): data and judges, the masked SFT loss, LoRA (equal to the
base at step 0, merged equal to adapted, refused when it cannot fit), resume bit for bit, stop keeps the
work, bad input with its message, and export of a post-trained run with its card. The losses against TRL
are in test_posttrain_peer.py."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from core.config import ModelConfig, TrainConfig
from core.posttrain import (PostEval, PostFinished, PostSamples, PostStarted, PostStep, PostTrainConfig,
                            PostTrainError, add_lora, load_reward_model, merged_model, post_train, sft_loss)
from core.preferences import (DataError, PreferencePair, distinct_n, make_judge, read_jsonl, write_jsonl)
from core.train import TrainingDiverged, train

# -- data and judges ------------------------------------------------------------------------------------


def test_jsonl_reads_pairs_and_names_the_line_and_field_of_every_fault():
    good = '{"prompt": "a", "chosen": "b", "rejected": "c"}\n\n{"prompt": "", "chosen": "x", "rejected": "y"}\n'
    assert read_jsonl(good, "pairs") == [PreferencePair("a", "b", "c"), PreferencePair("", "x", "y")]
    assert read_jsonl(write_jsonl(read_jsonl(good, "pairs")), "pairs") == read_jsonl(good, "pairs")
    cases = [
        ('{"prompt": "a", "chosen": "b"}', "line 1: the field 'rejected' is missing"),
        ('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": 3, "rejected": "c"}',
         "line 2: 'chosen' must be a string, not int"),
        ('{"prompt": "a", "chosen": "b", "rejected": "b"}', "line 1: 'chosen' and 'rejected' are the same text"),
        ('{"prompt": "a", "chosen": "", "rejected": "b"}', "line 1: 'chosen' is empty"),
        ('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen"', "line 2: not valid JSON"),
        ('["a", "b", "c"]', "line 1: a JSON object is needed"),
        ("\n\n", "holds no examples"),
    ]
    for text, message in cases:
        with pytest.raises(DataError, match=message):
            read_jsonl(text, "pairs", "prefs.jsonl")
    with pytest.raises(DataError, match="line 1: the field 'response' is missing"):
        read_jsonl('{"prompt": "a", "chosen": "b", "rejected": "c"}', "sft")
    with pytest.raises(DataError, match="not UTF-8"):
        read_jsonl(b'{"prompt": "\xff"}', "sft")


def test_judges_score_what_they_say():
    short = make_judge("short-lines")
    assert short.score("ab\ncd") == -2.0 and short.score("abcdef") == -6.0
    assert short.score("a\n\n\n") > short.score("hello there")
    word = make_judge("word:love")
    assert word.score("Love is love, not glove.") == 2.0
    assert make_judge("word").spec == "word:love"
    rhyme = make_judge("rhyme")
    assert rhyme.score("the cat\nthe hat\nthe dog") == 0.5
    assert rhyme.score("one line") == 0.0
    for bad, message in [("kindness", "unknown judge"), ("word:two words", "one word"), ("rhyme:x", "no argument")]:
        with pytest.raises(DataError, match=message):
            make_judge(bad)
    assert distinct_n(["abab"], 2) == pytest.approx(2 / 3)
    assert distinct_n(["aaaaaa"], 2) == pytest.approx(1 / 5)


def test_config_refuses_what_cannot_run():
    from core.checks import ConfigError
    for kw, message in [({"stage": "rlhf"}, "stage"), ({"stage": "ppo"}, "needs --reward-model"),
                        ({"beta": -0.1}, "beta"), ({"held_out": 1.0}, "held_out"),
                        ({"lora_rank": -1}, "lora_rank"), ({"steps": 0}, "steps"), ({"temperature": 0.0}, "temperature"),
                        ({"clip": 1.5}, "clip")]:
        with pytest.raises(ConfigError, match=message):
            PostTrainConfig(**kw)


# -- the masked SFT loss ------------------------------------------------------------------------------


def test_sft_loss_counts_only_response_tokens():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 11, (2, 7), generator=g)
    logits = torch.randn(2, 7, 11, generator=g)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 1, 0, 0]])    # row 2 right-padded after position 4
    # the same loss from cross-entropy with every non-response target set to ignore
    targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -1)
    want = F.cross_entropy(logits[:, :-1].reshape(-1, 11), targets.reshape(-1), ignore_index=-1)
    assert torch.allclose(sft_loss(logits, ids, mask), want, atol=1e-6)
    edited = logits.clone()
    # logits at t predict token t + 1: those predicting prompt tokens (row 0: tokens 1-2, row 1: token 1) and
    # padding (row 1: tokens 5-6) are not scored
    edited[0, :2] += 5 * torch.randn(2, 11, generator=g)
    edited[1, 0] += 5 * torch.randn(11, generator=g)
    edited[1, 4:] += 5
    assert torch.allclose(sft_loss(edited, ids, mask), want, atol=1e-6)
    edited[1, 3] += 5 * torch.randn(11, generator=g)           # predicts response token 4: scored
    assert not torch.allclose(sft_loss(edited, ids, mask), want, atol=1e-3)


# -- a tiny real base model ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, corpus_file, data_dir):
    out = tmp_path_factory.mktemp("base") / "run"
    cfg = TrainConfig(out_dir=str(out), corpus=str(corpus_file), data_dir=str(data_dir), tokenizer="byte",
                      batch_size=8, max_steps=60, learning_rate=3e-3, warmup_steps=5, eval_interval=60, eval_iters=2,
                      checkpoint_interval=0, threads=1, seed=0)
    mc = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=64)
    for _ in train(cfg, mc):
        pass
    return out


def small(tmp, stage, base, **kw) -> PostTrainConfig:
    defaults = dict(stage=stage, base=str(base), out_dir=str(tmp / stage), data="judge:short-lines", examples=24,
                    prompt_tokens=4, response_tokens=12, steps=4, batch_size=4, eval_interval=2, eval_samples=3,
                    checkpoint_interval=2, learning_rate=1e-3, seed=3)
    return PostTrainConfig(**{**defaults, **kw})


def records(cfg) -> list:
    return list(post_train(cfg))


def last_weights(run_dir) -> dict:
    from core.checkpoint import latest_checkpoint
    return latest_checkpoint(run_dir).tensors


def test_every_stage_runs_and_logs_what_it_promises(base_run, tmp_path):
    recs = records(small(tmp_path, "reward", base_run))
    started = recs[[type(r) for r in recs].index(PostStarted)]
    assert started.trainable == started.parameters        # full fine-tuning: every weight and the head
    evals = [r for r in recs if isinstance(r, PostEval)]
    assert [e.step for e in evals] == [0, 2, 4]
    assert set(evals[-1].metrics) >= {"loss", "accuracy", "margin"}
    assert len(evals[-1].chosen_rewards) == len(evals[-1].rejected_rewards) == started.held_out
    assert evals[0].metrics["loss"] == pytest.approx(0.6931, abs=1e-4)   # the head starts at 0: every score 0
    model, head, tok, meta = load_reward_model(str(tmp_path / "reward"))
    assert meta["posttrain"]["judge"] == "short-lines" and meta["posttrain"]["stage"] == "reward"

    dpo = records(small(tmp_path, "dpo", base_run, lora_rank=2))
    steps = [r for r in dpo if isinstance(r, PostStep)]
    assert set(steps[0].metrics) >= {"reward_chosen", "reward_rejected", "margin", "accuracy"}
    ev = [r for r in dpo if isinstance(r, PostEval)]
    assert ev[0].metrics["kl"] == 0 and ev[0].metrics["loss"] == pytest.approx(0.6931, abs=1e-4)
    assert "judge_score" in ev[-1].metrics and "distinct_2" in ev[-1].metrics
    samples = [r for r in dpo if isinstance(r, PostSamples)]
    assert samples and len(samples[0].texts) == 3

    ppo = records(small(tmp_path, "ppo", base_run, reward_model=str(tmp_path / "reward"), beta=0.05))
    m = [r for r in ppo if isinstance(r, PostStep)][-1].metrics
    assert set(m) >= {"reward", "kl", "entropy", "clip_fraction", "value_loss", "judge_score", "distinct_2"}
    assert isinstance(ppo[-1], PostFinished) and ppo[-1].step == 4

    sft = records(small(tmp_path, "sft", base_run))
    assert [r for r in sft if isinstance(r, PostEval)][-1].metrics["loss"] > 0


# -- LoRA ------------------------------------------------------------------------------------------------


def test_lora_starts_equal_to_the_base_and_merges_into_an_ordinary_model(base_run):
    from core.checkpoint import load_model
    model, _ = load_model(base_run)
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(ids).logits
    cfg = PostTrainConfig(lora_rank=4, lora_alpha=8)
    adapted = add_lora(model, cfg)
    trainable = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    # rank 4 on c_attn (32 -> 96), attn.c_proj (32 -> 32), c_fc (32 -> 128), mlp.c_proj (128 -> 32), 2 layers
    assert trainable == 2 * 4 * ((32 + 96) + (32 + 32) + (32 + 128) + (128 + 32))
    with torch.no_grad():
        assert torch.equal(adapted(ids).logits, want)               # B = 0: the adapted model is the base
        for name, p in adapted.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
        moved = adapted(ids).logits
        assert (moved - want).abs().max() > 1e-3
        merged = merged_model(adapted)
        assert type(merged).__name__ == "GPT"
        assert torch.allclose(merged(ids).logits, moved, atol=1e-5)


def test_lora_that_cannot_fit_is_refused_with_the_size(base_run, tmp_path):
    with pytest.raises(PostTrainError, match=r"LoRA rank 64 is larger than the layer 'c_attn' \(32 wide"):
        records(small(tmp_path, "sft", base_run, lora_rank=64))
    with pytest.raises(PostTrainError, match="no layer 'q_proj'.*c_attn"):
        records(small(tmp_path, "sft", base_run, out_dir=str(tmp_path / "b"), lora_rank=2, lora_targets="q_proj"))


# -- resume, stop ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage,lora", [("dpo", 2), ("sft", 0)])
def test_a_stopped_and_resumed_run_is_bit_identical_to_one_straight_through(base_run, tmp_path, stage, lora):
    straight = small(tmp_path / "a", stage, base_run, lora_rank=lora, steps=6, checkpoint_interval=0)
    records(straight)
    cfg = small(tmp_path / "b", stage, base_run, lora_rank=lora, steps=6, checkpoint_interval=0)
    gen = post_train(cfg)
    for rec in gen:
        if isinstance(rec, PostStep) and rec.step == 3:
            gen.close()                  # what the CLI does on Ctrl-C or SIGTERM: the stop saves step 3
            break
    from core.catalog import checkpoint_steps
    assert [s for s, _ in checkpoint_steps(cfg.out_dir)] == [3]
    records(small(tmp_path / "b", stage, base_run, lora_rank=lora, steps=6, checkpoint_interval=0, resume=True))
    a, b = last_weights(straight.out_dir), last_weights(cfg.out_dir)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith(("model.", "lora.")))
    log = [json.loads(line) for line in open(f"{cfg.out_dir}/log.jsonl")]
    assert [r["step"] for r in log if r["type"] == "PostStep"] == [1, 2, 3, 4, 5, 6]


def test_an_existing_run_is_refused_and_resume_needs_a_checkpoint(base_run, tmp_path):
    records(small(tmp_path, "sft", base_run, steps=2))
    with pytest.raises(Exception, match="already holds a run"):
        records(small(tmp_path, "sft", base_run, steps=2))
    with pytest.raises(PostTrainError, match="nothing to resume"):
        records(small(tmp_path, "sft", base_run, out_dir=str(tmp_path / "none"), resume=True))
    with pytest.raises(PostTrainError, match="is a sft run; it cannot be resumed as dpo"):
        records(small(tmp_path, "dpo", base_run, out_dir=str(tmp_path / "sft"), steps=4, resume=True))


# -- bad input -------------------------------------------------------------------------------------------


def test_bad_data_and_models_are_refused_with_what_to_change(base_run, tmp_path):
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"prompt": "p", "response": "x" * 80}) + "\n" + json.dumps({"prompt": "q", "response": "y"}))
    with pytest.raises(DataError, match="example .*81 tokens but the model's context is 64"):
        records(small(tmp_path, "sft", base_run, data=str(long)))
    assert not (tmp_path / "sft").exists()                 # a refused run leaves nothing behind
    with pytest.raises(PostTrainError, match="no data file"):
        records(small(tmp_path, "sft", base_run, out_dir=str(tmp_path / "x"), data=str(tmp_path / "missing.jsonl")))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a"}\n')
    with pytest.raises(DataError, match="bad.jsonl, line 2: the field 'chosen' is missing"):
        records(small(tmp_path, "dpo", base_run, out_dir=str(tmp_path / "y"), data=str(bad)))
    records(small(tmp_path, "reward", base_run, out_dir=str(tmp_path / "rm"), steps=2))
    with pytest.raises(PostTrainError, match="is a reward model: it scores texts"):
        records(small(tmp_path, "sft", tmp_path / "rm", out_dir=str(tmp_path / "z")))
    with pytest.raises(PostTrainError, match="not a reward model"):
        records(small(tmp_path, "ppo", base_run, out_dir=str(tmp_path / "w"), reward_model=str(base_run)))


def test_a_policy_whose_tokenizer_differs_from_the_reward_models_is_refused(base_run, tmp_path, corpus_file, data_dir):
    other = tmp_path / "bpe-run"
    cfg = TrainConfig(out_dir=str(other), corpus=str(corpus_file), data_dir=str(data_dir), tokenizer="bpe",
                      bpe_vocab_size=300, batch_size=4, max_steps=2, eval_interval=2, eval_iters=1, checkpoint_interval=0,
                      threads=1)
    for _ in train(cfg, ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=64)):
        pass
    records(small(tmp_path, "reward", base_run, out_dir=str(tmp_path / "rm"), steps=2))
    with pytest.raises(PostTrainError, match="the reward model reads tokenizer"):
        records(small(tmp_path, "ppo", other, out_dir=str(tmp_path / "p"), reward_model=str(tmp_path / "rm")))
    assert not (tmp_path / "p").exists()


def test_a_diverging_ppo_run_stops_with_its_message_and_keeps_the_last_checkpoint(base_run, tmp_path):
    records(small(tmp_path, "reward", base_run, out_dir=str(tmp_path / "rm"), steps=2))
    cfg = dict(reward_model=str(tmp_path / "rm"), checkpoint_interval=2, eval_interval=0)
    records(small(tmp_path, "ppo", base_run, steps=2, **cfg))
    before = last_weights(tmp_path / "ppo")
    # resumed with an absurd learning rate and no clipping: the policy's logits overflow within a few steps
    with pytest.raises(TrainingDiverged, match="last checkpoint is kept"):
        records(small(tmp_path, "ppo", base_run, steps=12, learning_rate=1e6, grad_clip=0, resume=True, **cfg))
    from core.catalog import checkpoint_file
    from core.checkpoint import load_checkpoint
    kept = load_checkpoint(checkpoint_file(tmp_path / "ppo", 2)).tensors      # the good one, as it was
    assert kept.keys() == before.keys() and all(torch.equal(before[k], v) for k, v in kept.items())


# -- export ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_post_trained_run_exports_like_any_run_with_its_card(base_run, tmp_path):
    from core.export import ExportError, export_model
    from core.runtime import Model
    records(small(tmp_path, "dpo", base_run, lora_rank=2, beta=0.2))
    card = export_model(tmp_path / "dpo", tmp_path / "exported" / "dpo-model")
    post = card["posttraining"]
    assert post["stage"] == "dpo" and post["beta"] == 0.2 and post["judge"] == "short-lines"
    assert post["base"]["path"] == base_run.name and len(post["data_sha256"]) == 64
    assert str(tmp_path) not in json.dumps(card) and str(base_run.parent) not in json.dumps(card)   # no server paths
    assert post["lora"] == {"rank": 2, "alpha": 16.0, "targets": "c_attn,c_proj,c_fc"}
    m = Model(tmp_path / "exported" / "dpo-model")
    assert m.score("The cat sat.").perplexity > 1
    records(small(tmp_path, "reward", base_run, steps=2))
    with pytest.raises(ExportError, match="is a reward model"):
        export_model(tmp_path / "reward", tmp_path / "exported" / "rm")


@pytest.mark.slow
def test_the_learn_pages_walkthrough_equals_the_trainers_formulas(base_run, tmp_path):
    """core.explain (numpy, the exported graphs) against core.posttrain (torch, the checkpoints) on one pair:
    the summed response log-probs, DPO's implicit rewards and loss."""
    from core.checkpoint import load_model
    from core.explain import preference_walkthrough
    from core.export import export_model
    from core.posttrain import dpo_loss, encode_pair_side, pad_batch, sequence_logprob
    from core.runtime import Model
    records(small(tmp_path, "dpo", base_run, steps=6, learning_rate=3e-3))
    export_model(base_run, tmp_path / "m" / "base")
    export_model(tmp_path / "dpo", tmp_path / "m" / "dpo")
    prompt, chosen, rejected = "The cat", " sat.\nThe dog ran.", " and then the big red house slowly"
    walk = preference_walkthrough(Model(tmp_path / "m" / "dpo"), Model(tmp_path / "m" / "base"), prompt, chosen,
                                  rejected, 0.1)
    policy, ref = load_model(tmp_path / "dpo")[0], load_model(base_run)[0]
    from core.tokenizer import load_tokenizer
    tok = load_tokenizer(base_run / "tokenizer")
    ids, mask, _ = pad_batch([encode_pair_side(tok, prompt, y, 64, "pair") for y in (chosen, rejected)], "cpu")
    with torch.no_grad():
        pc, pr = sequence_logprob(policy(ids).logits, ids, mask)
        rc, rr = sequence_logprob(ref(ids).logits, ids, mask)
        loss, plus, minus = dpo_loss(pc[None], pr[None], rc[None], rr[None], 0.1)
    assert walk.chosen.logprob == pytest.approx(float(pc), abs=1e-3)
    assert walk.ref_rejected.logprob == pytest.approx(float(rr), abs=1e-3)
    assert abs(walk.reward_chosen - walk.reward_rejected) > 1e-3          # the DPO run moved the two apart
    assert walk.reward_chosen == pytest.approx(float(plus), abs=1e-4)
    assert walk.reward_rejected == pytest.approx(float(minus), abs=1e-4)
    assert walk.dpo_loss == pytest.approx(float(loss), abs=1e-4)
    assert walk.chosen.tokens == int(mask[0].sum())


def test_a_run_stopped_before_its_first_step_resumes_from_step_0(base_run, tmp_path):
    cfg = small(tmp_path, "sft", base_run, steps=2)
    gen = post_train(cfg)
    for rec in gen:
        if isinstance(rec, PostEval):           # the first evaluation, before any step
            gen.close()
            break
    from core.catalog import checkpoint_steps
    assert [s for s, _ in checkpoint_steps(cfg.out_dir)] == [0]
    recs = records(small(tmp_path, "sft", base_run, steps=2, resume=True))
    assert [r.step for r in recs if isinstance(r, PostStep)] == [1, 2]
    log = [json.loads(line) for line in open(f"{cfg.out_dir}/log.jsonl")]
    assert [r["step"] for r in log if r["type"] == "PostEval"] == [0, 2]


def test_data_the_base_models_tokenizer_cannot_read_is_refused_with_the_example(tmp_path):
    """A task model (symbols only) given English pairs."""
    from core.posttrain import encode_pair_side
    from core.tokenizer import SymbolTokenizer
    tok = SymbolTokenizer("symbols-test", ["a", "b", "c"])
    assert encode_pair_side(tok, "a b", "c", 64, "example 1") == ([0, 1, 2], 2)
    with pytest.raises(DataError, match="example 2: the base model's tokenizer .* cannot read it"):
        encode_pair_side(tok, "hello", "world", 64, "example 2")


def test_grpo_compares_each_rollout_with_its_group_and_needs_a_group(base_run, tmp_path):
    from core.posttrain import group_advantages, grpo_loss
    adv = group_advantages(torch.tensor([1.0, 3.0, 5.0, 7.0, 0.0, 0.0, 0.0, 4.0]), 4)
    assert torch.allclose(adv[:4], torch.tensor([-3.0, -1.0, 1.0, 3.0]) / (torch.tensor([1.0, 3, 5, 7]).std() + 1e-4))
    assert adv[4] == adv[5] == adv[6] < 0 < adv[7]
    lp = torch.log(torch.full((2, 3), 0.5))
    loss, kl, clipped = grpo_loss(lp, lp, lp, torch.tensor([1.0, -1.0]), 0.1, 0.2)
    assert float(kl) == 0 and clipped == 0 and float(loss) == pytest.approx(0.0)   # ratio 1: surrogate = ±A, mean 0
    from core.checks import ConfigError
    with pytest.raises(ConfigError, match="group_size must be between 2 and batch_size"):
        PostTrainConfig(stage="grpo", reward_model="x", group_size=1)
    records(small(tmp_path, "reward", base_run, out_dir=str(tmp_path / "rm"), steps=2))
    recs = records(small(tmp_path, "grpo", base_run, reward_model=str(tmp_path / "rm"), group_size=2))
    m = [r for r in recs if isinstance(r, PostStep)][-1].metrics
    assert set(m) >= {"reward", "kl", "kl_k3_per_token", "entropy", "clip_fraction", "judge_score", "distinct_2"}
    assert "value_loss" not in m
    from core.checkpoint import latest_checkpoint
    assert not [k for k in latest_checkpoint(tmp_path / "grpo").tensors if "head" in k]
