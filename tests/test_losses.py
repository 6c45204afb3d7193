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
