"""HDPO, conditional (efficiency-within-correct) advantage (Yan et al. 2026, "Act Wisely: Cultivating
Meta-Cognitive Tool Use in Agentic Multimodal Models", the Metis agent, arXiv 2604.08545).

Why: a tool-call penalty folded into the reward is either strong enough to suppress needed calls or,
once the accuracy reward's variance enters the group normalisation, too weak to matter. HDPO keeps
two advantage channels: accuracy over the whole group, and tool economy only among the group's
correct trajectories, so a trajectory is never paid for stopping early with a wrong answer.

Formula (per trajectory i of group G; every row of i gets the same value):

    R_acc,i  = (1 - fmt_weight) * R_ans,i + fmt_weight * R_fmt,i          (0.9 / 0.1)
    A_acc,i  = (R_acc,i - mean_G R_acc) / (std_G R_acc + eps)               (GRPO over all of G)
    R_tool,i = 1 / (T_i + 1) if i is correct, else 0
    Q        = {j in G : j correct}
    A_eff,i  = (R_tool,i - mean_Q R_tool) / (std_Q R_tool + eps) for i in Q, 0 otherwise; |Q| < 2 -> 0
    A_i      = A_acc,i + eff_weight * A_eff,i

Sources. The formulas follow the paper as summarised by a third party (saikatkumardey.com ML-wiki,
"metis-hdpo-meta-cognitive-tool-use"): R_acc = 0.9 R_ans + 0.1 R_fmt with R_ans the binary answer
correctness, A_acc standard GRPO over all G rollouts, R_tool = 1/(T+1) if correct else 0 with T the
trajectory's tool calls, A_eff normalised over the correct set Q only, the two combined at the loss
level. The authors' code (github.com/Accio-Lab/Metis) and the paper's PDF were not in the searched
store, so these are [inferred] here: ``eff_weight`` w = 1, the rule |Q| < 2 -> A_eff = 0 (a z-score
over one member is 0 anyway), the unbiased std (n - 1) and eps 1e-6 (as ``grpo``).

What agentrl's batch supplies [ours]:

- correct = the trajectory's ``success`` (what the env declares solved: exact match for ``search``,
  reward >= ``success_threshold`` for ``tools``); Q is always built from it.
- R_ans (``answer``): ``"success"`` (default, binary as the paper's judge verdict) or ``"outcome"``
  (the env's graded outcome, e.g. a partial reward).
- R_fmt (``format_reward``): the batch has no per-step parse flag (``Step.info["format_valid"]`` is
  not a column), only ``valid`` = parsed AND accepted by the env. ``"all_valid"`` (default) gives 1
  when every row of the trajectory is valid, else 0; ``"valid_rate"`` the trajectory's share of
  valid rows. A rejected action (a tool call that failed, an unknown search command) thus costs the
  format term too. No separate invalid-action penalty is applied: R_fmt plays that role.
- T: the number of rows of the trajectory with ``tool_call`` set, i.e. turns the env answered with
  a tool result (the rollout copies the env's ``info["tool_call"]``). ``search``: one search per
  turn, so T = the number of searches. ``tools`` and ``bfcl``: a turn may carry several parallel
  calls and counts once, so T is tool turns, not calls (the batch cannot tell how many calls a turn
  held). ``webshop``: the env sets no ``tool_call``, so the column is absent and this estimator
  raises ``MissingInputError``; T = search actions there needs the env to mark ``search[...]``
  turns with ``info["tool_call"]``. The maze has no tool calls either, so the fidelity benchmark
  lists ``hdpo`` as skipped and the learning benchmark on the maze leaves it out
  (``trainable_estimators`` needs the ``tool_call`` response format).

With w = 1 a correct trajectory that used more tool turns than its correct siblings can end below 0,
in a large group even below its wrong siblings: 16 rollouts, 10 correct, nine of them tool-free and
one with tool turns give that one A_acc 0.75 and A_eff -9/sqrt(10) = -2.85, the wrong ones -1.25.

Two channels vs one advantage. The paper's loss is ``L = L_clip(A_acc) + w * L_clip(A_eff)``, two
clipped terms on the same tokens. ``step`` is the summed scalar ``A_acc + w * A_eff``, which the
default loss (``ppo_token_mean``) and every other one-advantage loss train on. Per token with ratio
r and ``c(r) = clip(r, 1 - eps_low, 1 + eps_high)``, the paper's term is
``-min(r A_acc, c(r) A_acc) - w min(r A_eff, c(r) A_eff)`` and the summed one ``-min(r A, c(r) A)``
with ``A = A_acc + w A_eff``. They are identical wherever r lies inside the clip range (both are
``-r A``), and also outside it when A_acc and A_eff have the same sign or A_eff is 0 (every
incorrect trajectory, every group with |Q| < 2). They differ only on tokens whose ratio left the
range while the two channels disagree in sign: the paper clips each channel on its own, so the one
pulling r back keeps its gradient; the summed term is clipped or not as a whole, by the sign of
the sum. The same holds per sequence for ``gspo``.

The paper's form: the estimator declares its two channels (``channels={"acc": 1, "eff":
"eff_weight"}``: ``extras["acc"]`` = A_acc and ``extras["eff"]`` = A_eff per row, the latter weighed
by the option ``eff_weight``), and ``algorithm.loss: ppo_channels`` makes the trainer spread both to
tokens and sum one clipped objective per channel, token-mean like ``ppo_token_mean`` (the paper's
aggregation was not in reach). The recipes (configs/recipes/{search,tools,bfcl}/hdpo.yaml) use it.
"""

from __future__ import annotations

import numpy as np

from agentrl.credit.base import Advantages, register_estimator
from agentrl.credit.ops import centred_group_stats, check_choice, check_finite, layout
from agentrl.types import StepBatch

ANSWERS = ("success", "outcome")
FORMAT_REWARDS = ("all_valid", "valid_rate")
PAPER = (
    "Yan et al. 2026, Act Wisely: Cultivating Meta-Cognitive Tool Use in Agentic Multimodal Models "
    "(HDPO, Metis), arXiv 2604.08545"
)


def _zscore(x: np.ndarray, g: np.ndarray, n_groups: int, eps: float) -> np.ndarray:
    """(x - group mean) / (unbiased group std + eps); exactly 0 for constant or one-member groups."""
    centred, std, _ = centred_group_stats(x, g, n_groups, ddof=1)
    return centred / (std[g] + eps)


def hdpo_channels(
    batch: StepBatch, *, fmt_weight: float, answer: str, format_reward: str, eps: float
) -> tuple[np.ndarray, np.ndarray]:
    """(A_acc, A_eff) per trajectory of a canonical batch, in trajectory-slot order."""
    lay = layout(batch)
    n_groups = batch.num_groups
    g = lay.per_traj(batch.group_idx)
    correct = lay.per_traj(batch.success).astype(bool)
    r_ans = correct.astype(np.float64) if answer == "success" else lay.per_traj(batch.outcome)
    invalid = np.bincount(lay.slot, weights=~batch.valid, minlength=lay.n_traj)
    r_fmt = (invalid == 0).astype(np.float64) if format_reward == "all_valid" else 1.0 - invalid / lay.lengths
    r_acc = (1.0 - fmt_weight) * r_ans + fmt_weight * r_fmt
    a_acc = _zscore(r_acc, g, n_groups, eps)

    tools = np.bincount(lay.slot, weights=batch.column("tool_call"), minlength=lay.n_traj)
    a_eff = np.zeros(lay.n_traj)
    q = np.flatnonzero(correct)
    if q.size:
        q_count = np.bincount(g[q], minlength=n_groups)
        z = _zscore(1.0 / (tools[q] + 1.0), g[q], n_groups, eps)
        a_eff[q] = np.where(q_count[g[q]] >= 2, z, 0.0)
    return a_acc, a_eff


@register_estimator("hdpo", fields=("tool_call",), paper=PAPER, channels={"acc": 1.0, "eff": "eff_weight"})
def hdpo(
    batch: StepBatch,
    *,
    eff_weight: float = 1.0,
    fmt_weight: float = 0.1,
    answer: str = "success",
    format_reward: str = "all_valid",
    eps: float = 1e-6,
) -> Advantages:
    """GRPO on 0.9*answer + 0.1*format, plus w x the z-scored 1/(tool turns + 1) among the group's
    correct trajectories."""
    check_finite("eff_weight", eff_weight, 0.0)
    check_finite("fmt_weight", fmt_weight, 0.0, 1.0)
    check_choice("answer", answer, ANSWERS)
    check_choice("format_reward", format_reward, FORMAT_REWARDS)
    check_finite("eps", eps, 0.0)
    if eps <= 0:
        raise ValueError(f"option eps={eps!r} must be > 0")
    lay = layout(batch)
    a_acc, a_eff = hdpo_channels(
        batch, fmt_weight=fmt_weight, answer=answer, format_reward=format_reward, eps=eps
    )
    return Advantages(
        step=(a_acc + eff_weight * a_eff)[lay.slot],
        extras={"acc": a_acc[lay.slot], "eff": a_eff[lay.slot]},
    )
