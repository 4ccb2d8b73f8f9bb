"""Training of the thesis' chapter-4 GAN (§4.1-§4.4): the stages ``gan_tagger``, ``gan_stage1`` and
``gan_stage2`` (registered in :mod:`training.stages`), run by :class:`training.gan.trainer.GANTrainer` on the
shared run machinery (:mod:`training.run`). The networks, losses and file format are the library's
(:mod:`colorize.families.gan`); here are the samples (:mod:`training.gan.data`), the per-stage networks and
their starting weights (:mod:`training.gan.model`), the objectives and every choice the thesis leaves open
(:mod:`training.gan.objective`) and the loop (:mod:`training.gan.trainer`)."""
