"""The model and what runs it: the network, the checks its configs share and the seeds,
jigsaw puzzles, losses, training data, sliding-window inference, pseudo-labelling, training
and pre-training, calibration, metrics, instances, the classical first mask and the
plausibility check."""
