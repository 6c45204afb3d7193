"""Confidence intervals, as ``agentrl.eval.stats``: they live in ``agentrl.stats``, below the trainers,
which report them for their before/after evaluations too."""

from agentrl.stats import Z95, Interval, bootstrap_mean, t95, t_mean, wilson

__all__ = ["Z95", "Interval", "bootstrap_mean", "t95", "t_mean", "wilson"]
