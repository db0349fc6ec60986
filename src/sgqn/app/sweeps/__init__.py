"""Sweeps: a grid of `sgqn fit` runs (algorithms × tasks × seeds × any override) on Ray Tune, one MLflow
parent run per sweep with one child run per trial (`sgqn sweep`; the table is `sgqn report`)."""
