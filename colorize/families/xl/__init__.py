"""ColorizeDiffusion XL (SDXL, 1024 px; official repository tellurion-kanata/ColorizeDiffusionXL at commit ec78784):
its modules, being written one file each. Not yet a registered family (``colorize.families.FAMILIES``): the
registry entry comes with the loader, the pipeline and the nodes."""
