"""Deciders behind one protocol (:mod:`smoelib.policy.base`): baselines and the learned policy."""
