"""Multi-face trackers. `SortTracker` is a SORT / BYTE-style tracker on filterpy's KalmanFilter."""
from trackers.sort import Association, SortTracker, TrackerConfig, associate, iou_matrix

__all__ = ["Association", "SortTracker", "TrackerConfig", "associate", "iou_matrix"]
