"""Training scripts built on ``colorize`` (never on ``nodes``).

``python -m training.train --config CONFIG.json`` (one process per device; ``torchrun`` for several).
Modules: ``config`` (dataclass configs), ``stages`` (what each stage trains), ``data`` / ``augment`` /
``batches`` (triplet sources, thesis §3.2 augmentations, deterministic batch plan), ``objective``
(Eq. 5.2 / 5.3), ``model`` (trainable denoiser, frozen VAE and CLIP), ``engine`` (the loop),
``checkpoint`` / ``export`` (resumable state, released-layout safetensors), ``prepare`` (sketch
extraction), ``synthetic`` (test data), ``bench_gpu`` (GPU acceptance benchmark), ``bad_samples``
(unreadable samples: skipped, replaced, counted, limited), ``errors`` (the one-line errors the CLI prints).
"""
