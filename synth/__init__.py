"""ddpipe.synth: recover methods and selection baselines (issue: synth)."""
