"""The model and what runs it: the network, jigsaw puzzles, losses, training data,
sliding-window inference, pseudo-labelling, training and pre-training, calibration,
metrics, instances, the classical first mask and the plausibility check."""
