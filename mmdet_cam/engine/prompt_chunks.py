"""Long prompts cut into chunks (Grounding DINO and GLIP with ``test_cfg.chunked_size``, e.g.
the 1203 LVIS classes in chunks of 40): mmdet runs the transformer (GLIP: the head) once per
chunk over the same image features and concatenates the detections, labels offset by the
entities of the chunks before. Keeping every chunk's graph for the backward holds about 1 GB
per chunk at 256 px (31 chunks: out of memory on 24 GB), although a box depends only on its
own chunk. :func:`graph_only_for` keeps the graph of the chunks whose labels are explained
and runs the others without one; the engine finds those labels with a first forward without
gradients (see ``explain``)."""
import contextlib
from typing import Collection, Iterator

import torch
from torch import nn

from ..patching import swapped


def chunk_count(detector: nn.Module, data_sample) -> int:
    """How many chunks ``detector`` cuts the prompt of ``data_sample`` into (1: not cut, or a
    detector that takes no prompt)."""
    if 'text' not in data_sample or (getattr(detector, 'test_cfg', None) or {}).get(
            'chunked_size', -1) <= 0:
        return 1
    prompts = detector.get_tokens_positive_and_prompts(
        data_sample.text, data_sample.get('custom_entities', False),
        data_sample.get('caption_prompt'), data_sample.get('tokens_positive'))[1]
    return len(prompts) if isinstance(prompts, list) else 1


@contextlib.contextmanager
def graph_only_for(detector: nn.Module, labels: Collection[int]) -> Iterator[None]:
    """While active, each chunk of a chunked prompt whose label range (its entities, after the
    entities of the chunks before it) holds none of ``labels`` runs without gradients."""
    owner, name = ((detector, 'forward_transformer') if hasattr(detector, 'forward_transformer')
                   else (detector.bbox_head, 'predict'))  # GLIP: the head fuses image and text
    run_chunk = getattr(owner, name)
    labels = set(int(label) for label in labels)
    first_label = 0

    def chunk(*args, **kwargs):
        nonlocal first_label
        samples = kwargs.get('batch_data_samples', args[2] if len(args) > 2 else None)
        count = len(samples[0].token_positive_map)
        needed = any(first_label <= label < first_label + count for label in labels)
        first_label += count
        with torch.set_grad_enabled(needed and torch.is_grad_enabled()):
            return run_chunk(*args, **kwargs)

    with swapped(owner, name, chunk):
        yield
