"""Pictures of maps: heatmap overlays, boxes drawn by mmdet's visualizer, in-box
renormalisation. Arrays in, images out."""
from .overlays import BoxDrawer, class_name, fuse_boxes, heatmap, overlay, renormalize_in_boxes

__all__ = ['BoxDrawer', 'class_name', 'fuse_boxes', 'heatmap', 'overlay', 'renormalize_in_boxes']
