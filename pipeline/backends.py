"""The names of the loader's image backends and of the batched backend's resize kernels, importable
without torch (phase configs list them as choices; :mod:`ddpipe.pipeline.loader` builds them).

- ``torch``: the reference, a stock ``DataLoader`` whose workers decode, crop and normalise per sample;
- ``dali``: NVIDIA DALI's graph (GPU with mixed decoders where there is one, else ``device_id=None``);
- ``batched``: decoded uint8 images cropped, resized and normalised a batch at a time in torch
  (threads on the CPU, one batched kernel on a GPU); see docs/pipeline.md.
"""

BACKENDS = ("torch", "dali", "batched")

KERNELS = ("auto", "per-sample", "matmul")
"""The batched backend's resize kernels (``LoaderConfig.kernel``): ``auto`` (per-sample on the CPU,
matmul on a GPU), ``per-sample`` or ``matmul`` (:mod:`ddpipe.pipeline.batched`)."""
