"""The detector side: config names, building, checkpoints, the test pipeline, layer names."""
