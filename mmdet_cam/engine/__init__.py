"""The per-detection engine: one forward with the target layers captured, per-box targets
and gradients, reshape transforms, and the map back onto the original image."""
