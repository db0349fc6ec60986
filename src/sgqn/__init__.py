"""sgqn: saliency-guided Q-networks and baselines on the DeepMind Control Generalization Benchmark."""

__version__ = "0.1.0"
