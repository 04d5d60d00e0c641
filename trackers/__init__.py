"""Multi-face trackers. `SortTracker` is a SORT / BYTE-style tracker on filterpy's KalmanFilter."""
from trackers.sort import SortTracker, TrackerConfig, iou_matrix

__all__ = ["SortTracker", "TrackerConfig", "iou_matrix"]
