"""The learning-rate schedule, the settings' checks, and one optimizer step on a tiny model:
gradient accumulation over micro-batches gives the same update as one big batch."""

from __future__ import annotations

import copy

import pytest
import torch
from pydantic import ValidationError
from transformers import LlamaConfig, LlamaForCausalLM

from services.schemas import Sample
from tests.utils.samples import make_sample
from trainer.batch import shard_batch
from trainer.loss import feedback_augmented_loss
from trainer.settings import TrainerSettings
from trainer.step import get_lr, learnt_positions, setup_device, train_step


def settings(**overrides: object) -> TrainerSettings:
    return TrainerSettings(_env_file=None, **overrides)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("overrides", "step", "lr"),
    [
        ({}, 1, 1e-5),  # constant, no warm-up: the default
        ({"warmup_steps": 4}, 1, 0.25e-5),  # a quarter through warm-up
        ({"warmup_steps": 4}, 4, 1e-5),
        ({"warmup_steps": 4}, 400, 1e-5),  # constant after it
        # cosine over 10 steps after 2 of warm-up: half-way is the middle of lr and min_lr
        ({"schedule": "cosine", "warmup_steps": 2, "decay_steps": 10, "min_lr": 1e-6}, 7, 5.5e-6),
        ({"schedule": "cosine", "warmup_steps": 2, "decay_steps": 10, "min_lr": 1e-6}, 12, 1e-6),
        ({"schedule": "cosine", "warmup_steps": 2, "decay_steps": 10, "min_lr": 1e-6}, 99, 1e-6),
        # linear over max_steps when decay_steps is 0
        ({"schedule": "linear", "max_steps": 10}, 5, 0.5e-5),
    ],
)
def test_lr_schedule(overrides: dict, step: int, lr: float) -> None:
    assert get_lr(step, settings(**overrides)) == pytest.approx(lr)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"batch_size": 4, "micro_batch_size": 8}, r"micro_batch_size \(8\) exceeds batch_size"),
        ({"schedule": "cosine"}, "needs decay_steps or max_steps"),
        ({"lr": 1e-5, "min_lr": 1e-4}, "min_lr"),
        ({"lambda1": -1}, "lambda1"),
        # the other ranks of a torchrun job wait for rank 0 while it gathers a batch
        ({"max_wait_s": 60, "collective_timeout_s": 100}, "collective_timeout_s"),
        ({"strategy": "zero3"}, "strategy"),
    ],
)
def test_settings_refuse_inconsistent_values(overrides: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        settings(**overrides)


def test_cpu_defaults_to_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert setup_device(settings()) == (torch.device("cpu"), None)
    assert setup_device(settings(dtype="bfloat16")) == (torch.device("cpu"), torch.bfloat16)
    with pytest.raises(RuntimeError, match="no CUDA device"):
        setup_device(settings(device="cuda"))


def tiny_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    return LlamaForCausalLM(config)


def test_micro_batches_accumulate_to_the_full_batch_update() -> None:
    samples = [
        make_sample(prompt_token_ids=[1, 2, 3], completion_token_ids=list(range(5, 5 + n)))
        for n in (2, 7, 4)
    ]
    updated = []
    for micro in (3, 1):
        model = tiny_model()
        optimizer = torch.optim.AdamW(model.parameters())
        cfg = settings(batch_size=3, micro_batch_size=micro)
        shard = shard_batch(samples, 0, 1, micro, max_seq_len=64, pad_id=0, version=0)
        assert len(shard.micro_batches) == 3 // micro
        result = train_step(model, optimizer, shard, 1e-3, cfg, torch.device("cpu"), None)
        updated.append((result, model))
    (full, full_model), (accumulated, accumulated_model) = updated
    assert accumulated.loss == pytest.approx(full.loss, rel=1e-5)
    assert accumulated.grad_norm == pytest.approx(full.grad_norm, rel=1e-4)
    for a, b in zip(full_model.parameters(), accumulated_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert full.tokens == 13 and full.accuracy == 1.0 and full.feedback == pytest.approx(0.9)


def test_the_loss_on_kept_positions_is_the_loss_on_every_position() -> None:
    # completions at different places (prompts of different lengths), and padding
    samples = [
        make_sample(prompt_token_ids=list(range(1, 1 + p)), completion_token_ids=[9, 8, 7][:c])
        for p, c in ((2, 3), (6, 1), (4, 2))
    ]
    micro = shard_batch(samples, 0, 1, 3, max_seq_len=64, pad_id=0, version=0).micro_batches[0]
    keep = learnt_positions(micro.loss_mask)
    assert 0 < len(keep) < micro.loss_mask.shape[1]
    model = tiny_model()
    scores = (micro.solution_score, micro.reasoning_score, micro.is_correct, 2.0, 1.0)
    full = model(input_ids=micro.input_ids, attention_mask=micro.attention_mask).logits
    expected = feedback_augmented_loss(full, micro.target_ids, micro.loss_mask, *scores)
    kept = model(
        input_ids=micro.input_ids, attention_mask=micro.attention_mask, logits_to_keep=keep
    ).logits
    targets, mask = micro.target_ids[:, keep], micro.loss_mask[:, keep]
    got = feedback_augmented_loss(kept, targets, mask, *scores)
    torch.testing.assert_close(got.loss, expected.loss)
    assert learnt_positions(torch.zeros(2, 5, dtype=torch.bool)).tolist() == [4]


def test_a_step_changes_the_weights_and_lowers_the_loss_on_the_same_batch() -> None:
    batch = shard_batch([make_sample(completion_token_ids=[9, 8, 7, 6])], 0, 1, 1, 64, 0, 0)
    model = tiny_model()
    before = copy.deepcopy(model.state_dict())
    optimizer = torch.optim.AdamW(model.parameters())
    cfg = settings(batch_size=1, micro_batch_size=1)
    first = train_step(model, optimizer, batch, 1e-2, cfg, torch.device("cpu"), None)
    second = train_step(model, optimizer, batch, 1e-2, cfg, torch.device("cpu"), None)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert second.loss < first.loss
    assert first.grad_norm > 0


def test_a_stop_request_abandons_the_step_and_leaves_the_weights() -> None:
    batch = shard_batch([make_sample(completion_token_ids=[9, 8, 7, 6])] * 2, 0, 1, 1, 64, 0, 0)
    model = tiny_model()
    before = copy.deepcopy(model.state_dict())
    optimizer = torch.optim.AdamW(model.parameters())
    cfg = settings(batch_size=2, micro_batch_size=1)
    asked = iter([False, True])  # stop between the two micro-batches
    result = train_step(
        model, optimizer, batch, 1e-2, cfg, torch.device("cpu"), None, lambda: next(asked)
    )
    assert result is None
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert not optimizer.state


def sampled_by(model: LlamaForCausalLM, version: int, **fields: object) -> Sample:
    """A sample carrying `model`'s own log-probabilities of its tokens, as the engine would."""
    sample = make_sample(completion_token_ids=[9, 8, 7, 6], weight_version=version, **fields)
    ids = torch.tensor([sample.prompt_token_ids + sample.completion_token_ids])
    start = len(sample.prompt_token_ids) - 1
    with torch.no_grad():
        log_p = torch.log_softmax(model(ids).logits[0, start:-1], dim=-1)
    logprobs = log_p.gather(1, ids[0, start + 1 :, None]).squeeze(1).tolist()
    return sample.model_copy(update={"completion_logprobs": logprobs})


def test_a_step_measures_itself_against_the_samplers_by_versions_behind() -> None:
    model, stale = tiny_model(), tiny_model()
    with torch.no_grad():
        for p in stale.parameters():
            p.add_(0.5 * torch.randn_like(p))  # an older policy, far from this one
    samples = [sampled_by(model, version=3), sampled_by(stale, version=1)]
    batch = shard_batch(samples, 0, 1, 2, 64, 0, version=3)
    cfg = settings(batch_size=2, micro_batch_size=2, max_staleness=0)  # buckets "0", "1+"
    optimizer = torch.optim.AdamW(model.parameters())
    result = train_step(model, optimizer, batch, 1e-2, cfg, torch.device("cpu"), None)
    assert result is not None
    mismatch = result.mismatch
    assert mismatch.tokens == 8 and mismatch.masked == 0
    assert mismatch.kl_by_behind.keys() == {"0", "1+"}
    assert mismatch.kl_by_behind["0"] < 1e-6 < mismatch.kl_by_behind["1+"]


def test_the_correction_masks_what_is_too_far_off_policy() -> None:
    model, stale = tiny_model(), tiny_model()
    with torch.no_grad():
        for p in stale.parameters():
            p.add_(0.5 * torch.randn_like(p))
    samples = [sampled_by(model, version=0), sampled_by(stale, version=0)]
    batch = shard_batch(samples, 0, 1, 2, 64, 0, version=0)
    cfg = settings(batch_size=2, micro_batch_size=2, max_mismatch_kl=1e-3, is_weighting="token")
    optimizer = torch.optim.AdamW(model.parameters())
    result = train_step(model, optimizer, batch, 1e-2, cfg, torch.device("cpu"), None)
    assert result is not None and result.mismatch.masked == 1
