"""OpenMMLab workflow pieces: the test-time hook and the evaluation metrics."""
