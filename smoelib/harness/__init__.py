"""Experiments on the simulated cluster: the embedded default (``smoe demo``), the evaluation
of policies on common random numbers (``smoe evaluate``) and the tuning of baselines."""
