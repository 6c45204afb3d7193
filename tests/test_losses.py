"""Policy losses and the k3 KL against values worked out by hand from the formulas."""

from __future__ import annotations

import math

import pytest
import torch

from agentrl.trainers.losses import LOSSES, LossInput, kl_k3, register_loss


def _input(logp, adv, mask, old=None, **kw) -> LossInput:
    logp = torch.tensor(logp, dtype=torch.float32, requires_grad=True)
    old = torch.zeros_like(logp) if old is None else torch.tensor(old, dtype=torch.float32)
    mask_t = torch.tensor(mask, dtype=torch.float32)
    return LossInput(
        logp,
        old,
        torch.tensor(adv, dtype=torch.float32),
        mask_t,
        float(mask_t.sum()),
        float(mask_t.shape[0]),
        **kw,
    )


# ratios 1.5, 0.5 | 1.0, (masked); advantages 1, -1 | 2, 0; clip 0.2
LOGP = [[math.log(1.5), math.log(0.5)], [0.0, 0.3]]
ADV = [[1.0, -1.0], [2.0, 5.0]]
MASK = [[1, 1], [1, 0]]


def test_ppo_token_mean_by_hand():
    x = _input(LOGP, ADV, MASK)
    out = LOSSES.get("ppo_token_mean")(x)
    # token (0,0): min(1.5*1, 1.2*1) = 1.2 -> -1.2 (clipped); (0,1): min(-0.5, 0.8*-1) = -0.8 -> +0.8 (clipped);
    # (1,0): min(2, 2) -> -2 (not clipped). Mean over 3 tokens.
    assert float(out.loss) == pytest.approx((-1.2 + 0.8 - 2.0) / 3, abs=1e-6)
    assert float(out.clip_frac) == pytest.approx(2 / 3, abs=1e-6)
    assert float(out.ratio) == pytest.approx((1.5 + 0.5 + 1.0) / 3, abs=1e-6)
    out.loss.backward()
    # only the unclipped token has a gradient: d(-r*A)/dlogp = -r*A / n_tokens = -2/3
    assert x.logp.grad.flatten().tolist() == pytest.approx([0.0, 0.0, -2 / 3, 0.0], abs=1e-6)


def test_ppo_seq_mean_token_mean_by_hand():
    out = LOSSES.get("ppo_seq_mean_token_mean")(_input(LOGP, ADV, MASK))
    # sequence 0: mean(-1.2, 0.8) = -0.2; sequence 1: -2 (one token); mean over 2 sequences
    assert float(out.loss) == pytest.approx((-0.2 - 2.0) / 2, abs=1e-6)
    assert float(out.clip_frac) == pytest.approx((1.0 + 0.0) / 2, abs=1e-6)


def test_clip_higher_bounds_are_separate():
    out = LOSSES.get("ppo_token_mean")(_input(LOGP, ADV, MASK, clip_low=0.2, clip_high=0.6))
    # (0,0): ratio 1.5 is inside [0.8, 1.6]: -1.5, not clipped; the rest as before
    assert float(out.loss) == pytest.approx((-1.5 + 0.8 - 2.0) / 3, abs=1e-6)
    assert float(out.clip_frac) == pytest.approx(1 / 3, abs=1e-6)


def test_gspo_sequence_ratio_by_hand():
    logp = [[math.log(1.5), math.log(1.5)], [math.log(0.9), 7.0]]
    adv = [[1.0, 1.0], [-2.0, 9.0]]
    x = _input(logp, adv, [[1, 1], [1, 0]])
    out = LOSSES.get("gspo")(x)
    # seq 0: s = exp(mean(ln1.5, ln1.5)) = 1.5, A = 1 -> min(1.5, 1.2) = 1.2 -> -1.2 (clipped)
    # seq 1: s = 0.9 (masked token ignored), A = -2 -> min(-1.8, -1.8) -> +1.8
    assert float(out.loss) == pytest.approx((-1.2 + 1.8) / 2, abs=1e-6)
    assert float(out.clip_frac) == pytest.approx(0.5, abs=1e-6)
    assert float(out.ratio) == pytest.approx((1.5 + 0.9) / 2, abs=1e-6)
    out.loss.backward()
    # seq 1 unclipped: d(-s*A)/dlogp_t = -A * s / len / n_seqs = 2 * 0.9 / 1 / 2 = 0.9
    assert x.logp.grad.flatten().tolist() == pytest.approx([0.0, 0.0, 0.9, 0.0], abs=1e-6)


def test_minibatch_normalisers_make_micro_batches_add_up():
    whole = LOSSES.get("ppo_token_mean")(_input(LOGP, ADV, MASK))
    first = _input(LOGP[:1], ADV[:1], MASK[:1])
    second = _input(LOGP[1:], ADV[1:], MASK[1:])
    first.n_tokens = second.n_tokens = 3.0
    parts = LOSSES.get("ppo_token_mean")(first).loss + LOSSES.get("ppo_token_mean")(second).loss
    assert float(parts) == pytest.approx(float(whole.loss), abs=1e-6)


def test_k3_kl_by_hand():
    logp = torch.tensor([math.log(0.5), math.log(0.2)])
    ref = torch.tensor([math.log(0.25), math.log(0.2)])
    # d = ref - logp = ln 0.5: exp(d) - d - 1 = 0.5 + ln 2 - 1
    assert kl_k3(logp, ref).tolist() == pytest.approx([0.5 + math.log(2) - 1, 0.0], abs=1e-6)
    assert (kl_k3(torch.randn(100), torch.randn(100)) >= 0).all()


def test_loss_registry_takes_new_losses_and_names_unknown_ones():
    @register_loss("test_zero_loss")
    def zero(x):
        from agentrl.trainers.losses import LossOutput

        return LossOutput(x.logp.sum() * 0, torch.tensor(0.0), torch.tensor(1.0))

    assert "test_zero_loss" in LOSSES
    with pytest.raises(KeyError, match="unknown loss 'nope'; available: .*gspo.*ppo_token_mean"):
        LOSSES.get("nope")


def _channel_input(logp, channels, mask=None, dtype=torch.float32, **kw) -> LossInput:
    """One row of tokens with per-channel advantages; ``channels``: (weight, advantages) pairs."""
    logp_t = torch.tensor([logp], dtype=dtype, requires_grad=True)
    mask_t = torch.ones_like(logp_t) if mask is None else torch.tensor([mask], dtype=dtype)
    summed = sum(w * torch.tensor([a], dtype=dtype) for w, a in channels)
    return LossInput(
        logp_t,
        torch.zeros_like(logp_t).detach(),
        summed.detach(),
        mask_t,
        float(mask_t.sum()),
        1.0,
        channels=[(w, torch.tensor([a], dtype=dtype)) for w, a in channels],
        **kw,
    )


def test_ppo_channels_equals_the_summed_advantage_inside_the_clip_range():
    gen = torch.Generator().manual_seed(0)
    logp = (torch.rand(12, generator=gen) * 0.3 - 0.15).tolist()  # ratios in [0.86, 1.16], inside 1 +- 0.2
    acc = torch.randn(12, generator=gen).tolist()
    eff = (-torch.randn(12, generator=gen)).tolist()
    mask = [1.0] * 10 + [0.0, 0.0]
    for weight in (1.0, 0.3):
        two = _channel_input(logp, [(1.0, acc), (weight, eff)], mask)
        one = _channel_input(logp, [(1.0, acc), (weight, eff)], mask)
        out_two, out_one = LOSSES.get("ppo_channels")(two), LOSSES.get("ppo_token_mean")(one)
        assert float(out_two.loss) == pytest.approx(float(out_one.loss), abs=1e-6)
        assert float(out_two.clip_frac) == float(out_one.clip_frac) == 0.0
        assert float(out_two.ratio) == pytest.approx(float(out_one.ratio), abs=1e-7)
        out_two.loss.backward()
        out_one.loss.backward()
        assert torch.allclose(two.logp.grad, one.logp.grad, atol=1e-6)


def test_ppo_channels_by_hand_outside_the_clip_range_with_opposite_signs():
    # token 0: r = 1.5, A_acc = 2, A_eff = -1 (sum 1). Summed: -min(1.5, 1.2) = -1.2, clipped, no gradient.
    #   Two terms: -min(3, 2.4) - min(-1.5, -1.2) = -2.4 + 1.5 = -0.9; the eff term is unclipped: d/dlogp = +1.5
    # token 1: r = 0.5, A_acc = -1, A_eff = 2 (sum 1). Summed: -min(0.5, 0.8) = -0.5, unclipped: d/dlogp = -0.5.
    #   Two terms: -min(-0.5, -0.8) - min(1, 1.6) = 0.8 - 1 = -0.2; only the eff term: d/dlogp = -1.0
    # token 2: r = 1.5, A_acc = 1, A_eff = 1 (same sign): both -1.2 - 1.2 = -2.4 = summed -min(3, 2.4)
    logp = [math.log(1.5), math.log(0.5), math.log(1.5)]
    channels = [(1.0, [2.0, -1.0, 1.0]), (1.0, [-1.0, 2.0, 1.0])]
    two, one = _channel_input(logp, channels), _channel_input(logp, channels)
    out_two, out_one = LOSSES.get("ppo_channels")(two), LOSSES.get("ppo_token_mean")(one)
    assert float(out_one.loss) == pytest.approx((-1.2 - 0.5 - 2.4) / 3, abs=1e-6)
    assert float(out_two.loss) == pytest.approx((-0.9 - 0.2 - 2.4) / 3, abs=1e-6)
    assert float(out_two.loss) - float(out_one.loss) == pytest.approx((0.3 + 0.3) / 3, abs=1e-6)
    assert float(out_two.clip_frac) == pytest.approx(1.0, abs=1e-6)  # a channel clipped on every token
    assert float(out_one.clip_frac) == pytest.approx(2 / 3, abs=1e-6)
    out_two.loss.backward()
    out_one.loss.backward()
    assert two.logp.grad.flatten().tolist() == pytest.approx([1.5 / 3, -1.0 / 3, 0.0], abs=1e-6)
    assert one.logp.grad.flatten().tolist() == pytest.approx([0.0, -0.5 / 3, 0.0], abs=1e-6)
    # a weight scales its channel's term: w = 0.5 on eff, token 0 -> -2.4 - 0.5 * (-1.5) = -1.65
    half = LOSSES.get("ppo_channels")(_channel_input(logp[:1], [(1.0, [2.0]), (0.5, [-1.0])]))
    assert float(half.loss) == pytest.approx(-1.65, abs=1e-6)


def test_ppo_channels_gradient_matches_finite_differences():
    logp = torch.tensor([[0.1, -0.4, 0.3], [0.25, -0.05, 0.0]], dtype=torch.float64, requires_grad=True)
    old = torch.zeros_like(logp)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    acc = torch.tensor([[1.0, -0.5, 2.0], [-1.5, 0.7, 3.0]], dtype=torch.float64)
    eff = torch.tensor([[-2.0, 1.0, 0.5], [0.8, -0.3, 1.0]], dtype=torch.float64)

    def loss(lp):
        x = LossInput(lp, old, acc + 0.7 * eff, mask, 5.0, 2.0, channels=[(1.0, acc), (0.7, eff)])
        return LOSSES.get("ppo_channels")(x).loss

    assert torch.autograd.gradcheck(loss, (logp,), eps=1e-6, atol=1e-8)


def test_ppo_channels_is_a_channel_loss_and_needs_channels():
    from agentrl.trainers.losses import CHANNEL_LOSSES

    assert "ppo_channels" in CHANNEL_LOSSES
    assert not {"ppo_token_mean", "ppo_seq_mean_token_mean", "gspo"} & set(CHANNEL_LOSSES.names())
    with pytest.raises(ValueError, match="needs advantage channels"):
        LOSSES.get("ppo_channels")(_input(LOGP, ADV, MASK))
