"""A two-stage detector's proposals, changed while active: held at those of a first run
(:func:`pinned_proposals`) or completed by boxes a user names (:func:`added_proposals`)."""
import contextlib
import copy
from typing import Callable, Iterator

from mmengine.structures import InstanceData
from torch import Tensor, nn

from ..model.layers import predicting_detector
from ..patching import swapped


def pinned_proposals(model: nn.Module, store: dict):
    """While active, a two-stage detector's RPN returns the proposals it returned the first
    time (recorded in ``store``), so its RoI head sees the same RoIs whatever its weights."""
    def pinned(predict):
        def first_proposals(*args, **kwargs):
            if 'proposals' not in store:
                store['proposals'] = [r.detach() for r in predict(*args, **kwargs)]
            return copy.deepcopy(store['proposals'])
        return first_proposals
    return _rpn_predict_wrapped(model, pinned)


def added_proposals(model: nn.Module, boxes: Tensor):
    """While active, a two-stage detector's RPN also proposes ``boxes`` (``[N, 4]``,
    network-input pixels), so its RoI head scores exactly those regions: a box a user names
    becomes a RoI of its own. Other detectors are left as they are."""
    def with_boxes(predict):
        def proposals_and_boxes(*args, **kwargs):
            results = []
            for proposals in predict(*args, **kwargs):
                named = InstanceData(metainfo=proposals.metainfo)
                for key, value in proposals.items():
                    named[key] = (boxes.to(value) if key == 'bboxes' else
                                  value.new_ones((len(boxes),) + value.shape[1:]))
                results.append(InstanceData.cat([proposals, named]))
            return results
        return proposals_and_boxes
    return _rpn_predict_wrapped(model, with_boxes)


@contextlib.contextmanager
def _rpn_predict_wrapped(model: nn.Module, wrap: Callable) -> Iterator[None]:
    """While active, a two-stage detector's ``rpn_head.predict`` is ``wrap(predict)``."""
    rpn_head = getattr(predicting_detector(model), 'rpn_head', None)
    if rpn_head is None:
        yield
        return
    with swapped(rpn_head, 'predict', wrap(rpn_head.predict)):
        yield
