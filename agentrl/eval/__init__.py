"""Evaluation: confidence intervals, the credit-fidelity benchmark, reports."""

from agentrl.stats import Interval, bootstrap_mean, wilson

__all__ = ["Interval", "bootstrap_mean", "wilson"]
