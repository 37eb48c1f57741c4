"""ddpipe.pipeline: replay schedules, image sources and the DALI / torch loaders (issue: pipeline)."""
