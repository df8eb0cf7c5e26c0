"""One description of how a run explains: what every JSON file of it records (the CLI's and
``DetCAMHook``'s alike)."""
from typing import Optional

from ..engine.request import target_name


def describe_run(cam, explain_class: Optional[str] = None) -> dict:
    """How ``cam`` (a ``DetCAM``) explains: ``method`` and ``method_options``,
    ``explain_class`` (the class explained instead of the reported one, if any), ``target``
    and its options (``mask_region``, ``bbox_coord``), ``fuse``, ``texts`` (a text-prompted
    detector's prompt, if given) and the ``target_layers`` the method reads."""
    method, settings = cam.settings.method, cam.settings
    options = ({key: value for key, value in method.items() if key != 'type'}
               if isinstance(method, dict) else {})
    describe = getattr(cam.target, 'describe', dict)
    return dict(method=cam.method_pipeline.name, method_options=options,
                explain_class=explain_class, target=target_name(cam.target),
                fuse=settings.fuse, **describe(),
                **({'texts': settings.texts} if settings.texts else {}),
                target_layers=cam.layers_read)
