"""Text prompts of text-prompted detectors (Grounding DINO, MM-Grounding-DINO, GLIP).

A prompt is part of how an image is prepared for such a model: mmdet's ``inference_detector``
puts ``text`` and ``custom_entities`` next to the image before the test pipeline, whose
``PackDetInputs`` carries them into the data sample the detector reads. :class:`PromptedPipeline`
does the same for every image mmdet-cam prepares (explained images, masked and perturbed copies),
so nothing downstream needs to know about prompts.

Prompts are taken as mmdet takes them with ``custom_entities=True``: a string of entities
separated by ``' . '`` (``'circle . square'``), or a list of entity names. Without one, the
model's class names are the prompt, as mmdet's test configs do. (mmdet's other mode, noun phrases
parsed from free text, needs nltk data downloaded at run time and is not offered.)
"""
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

from torch import nn

from ..errors import BadInputError
from .layers import predicting_detector

TextsLike = Union[str, Sequence[str]]


def takes_text(model: nn.Module) -> bool:
    """Whether ``model``'s detector reads a text prompt (it has a language model)."""
    return getattr(predicting_detector(model), 'language_model', None) is not None


@dataclass(frozen=True)
class Prompt:
    """One text prompt as mmdet's detectors take it: ``text`` (a ``' . '``-separated string or
    a tuple of entity names) with ``custom_entities=True``."""
    text: Union[str, Tuple[str, ...]]

    @property
    def custom_entities(self) -> bool:
        return True


def build_prompt(model: nn.Module, texts: Optional[TextsLike],
                 class_names: Sequence[str] = ()) -> Optional[Prompt]:
    """The prompt for ``model`` from what a user gave (None: the class names), or None for a
    detector that takes no text. A prompt for such a detector, or no prompt and no class names
    for one that needs it, is a :class:`~mmdet_cam.errors.BadInputError`."""
    if not takes_text(model):
        if texts is not None:
            raise BadInputError(f'{type(predicting_detector(model)).__name__} takes no text '
                                'prompt: leave out texts (--texts)')
        return None
    if texts is None:
        if not class_names:
            raise BadInputError('this text-prompted detector needs a prompt and its config '
                                "names no classes: give texts (--texts 'cat . dog')")
        return Prompt(tuple(class_names))
    if isinstance(texts, str):
        if not entities_of_string(texts):
            raise BadInputError(f'the prompt {texts!r} names no entity: separate them with '
                                "' . ', e.g. 'cat . dog'")
        return Prompt(texts)
    names = tuple(str(t) for t in texts)
    if not names or not all(n.strip() for n in names):
        raise BadInputError(f'texts must name at least one entity, none empty; got {texts!r}')
    return Prompt(names)


def entities_of_string(text: str) -> List[str]:
    """The entities of a ``' . '``-separated prompt, as mmdet splits it."""
    return [e.strip() for e in text.strip('. ').split('. ') if e.strip()]


def entities(model: nn.Module, prompt: Prompt) -> List[str]:
    """The entity names of ``prompt`` in the order of the detector's labels, as the detector
    itself splits the prompt."""
    detector = predicting_detector(model)
    found = detector.get_tokens_positive_and_prompts(prompt.text, prompt.custom_entities)[-1]
    if found and isinstance(found[0], (list, tuple)):  # chunked prompts: one list per chunk
        found = [name for chunk in found for name in chunk]
    return [str(name).strip() for name in found]


def use_language_model(cfg, folder: str) -> int:
    """Point a text-prompted detector's config at a local language model: every string in
    ``cfg`` equal to the name its ``model.language_model`` loads (``lang_model_name``, e.g.
    ``'bert-base-uncased'``, which the GLIP head and some pipelines name too) becomes
    ``folder`` (any folder ``save_pretrained`` wrote). Returns how many were replaced; a config
    without a language model is a :class:`~mmdet_cam.errors.BadInputError`."""
    name = (cfg.get('model', {}).get('language_model') or {}).get('name')
    if not name:
        raise BadInputError('--language-model: this config has no model.language_model '
                            '(it is not a text-prompted detector)')

    def replace(container) -> int:
        keys = list(container) if isinstance(container, dict) else range(len(container))
        count = 0
        for key in keys:
            if container[key] == name:
                container[key] = str(folder)
                count += 1
            elif isinstance(container[key], (dict, list)):
                count += replace(container[key])
        return count
    return replace(cfg._cfg_dict if hasattr(cfg, '_cfg_dict') else cfg)


class PromptedPipeline:
    """A test pipeline that puts ``prompt`` next to every image it prepares, as mmdet's
    ``inference_detector`` does (``text``, ``custom_entities``)."""

    def __init__(self, pipeline, prompt: Prompt):
        self.pipeline, self.prompt = pipeline, prompt

    def __call__(self, results: dict) -> dict:
        return self.pipeline(dict(results, text=self.prompt.text,
                                  custom_entities=self.prompt.custom_entities))
