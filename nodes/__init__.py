"""ComfyUI nodes (thin layer over ``colorize``): filled in by the node-pack work."""
