"""ddpipe.evaluate: datasets, models, squeeze, relabel, train and validate (issue: evaluate)."""
