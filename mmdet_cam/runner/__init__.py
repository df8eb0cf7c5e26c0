"""OpenMMLab workflow pieces: the test-time hook, the localisation metric, and the adapter
that runs pytorch_grad_cam's own ``__call__`` on a detector (the reference path)."""
