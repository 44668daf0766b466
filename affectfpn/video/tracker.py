"""A simple IoU tracker that turns per-frame detections into face ids that persist.

Public as :class:`affectfpn.video.FaceTracker`.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torchvision.ops import box_iou

from affectfpn.errors import ConfigError, InputError

__all__ = ["FaceTracker"]

Box = tuple[float, float, float, float]
Points = Sequence[tuple[float, float]]


@dataclass
class _Track:
    box: Box
    landmarks: Points | None
    missed: int = 0


class FaceTracker:
    """Give each face a track id that persists across video frames (greedy IoU matching).

    At every frame, each (track, face) pair whose boxes overlap with IoU >= ``iou_threshold`` is
    a candidate; candidates are taken greedily, highest affinity first, each track and face at
    most once. A face left over starts a new track with a new id (0, 1, 2, ... in order of
    appearance; ids are never reused). A track not matched in a frame keeps its last box and
    survives ``max_missed`` such frames; after that it ends.

    The affinity is the IoU, minus ``landmark_weight`` times the mean distance between the
    face's landmarks and the track's last landmarks (divided by the track box's diagonal) when
    both have them; it only ranks candidates, which helps when two faces overlap the same track.

    Limits (by design, it is a simple tracker):

    * No motion model: a face that moves more than about its own size between processed frames
      (fast motion, or a large ``every_n``) fails the IoU gate and gets a new id.
    * Two faces that cross can swap ids: matching uses only the boxes' overlap, not appearance.
    * No re-identification: a face that leaves the view (or is missed by the detector) for more
      than ``max_missed`` processed frames comes back with a new id.

    Args:
        iou_threshold: Smallest IoU (0..1] for a face to continue a track.
        max_missed: Frames a track may go unseen (in processed frames, i.e. after ``every_n``)
            before it ends.
        landmark_weight: Weight of the landmark distance in the affinity (>= 0; 0 ignores
            landmarks).

    Example:
        >>> tracker = FaceTracker()
        >>> tracker.update([(0, 0, 10, 10)])
        [0]
        >>> tracker.update([(50, 50, 60, 60), (1, 1, 11, 11)])
        [1, 0]
    """

    def __init__(
        self, iou_threshold: float = 0.3, max_missed: int = 10, landmark_weight: float = 0.0
    ) -> None:
        if isinstance(iou_threshold, bool) or not isinstance(iou_threshold, (int, float)):
            raise ConfigError(f"track_iou must be a number in (0, 1], got {iou_threshold!r}")
        if not 0.0 < iou_threshold <= 1.0:
            raise ConfigError(f"track_iou must be in (0, 1], got {iou_threshold!r}")
        if isinstance(max_missed, bool) or not isinstance(max_missed, int) or max_missed < 0:
            raise ConfigError(f"max_missed must be an integer >= 0, got {max_missed!r}")
        if (
            isinstance(landmark_weight, bool)
            or not isinstance(landmark_weight, (int, float))
            or not math.isfinite(landmark_weight)
            or landmark_weight < 0
        ):
            raise ConfigError(f"landmark_weight must be a number >= 0, got {landmark_weight!r}")
        self.iou_threshold = float(iou_threshold)
        self.max_missed = max_missed
        self.landmark_weight = float(landmark_weight)
        self._tracks: dict[int, _Track] = {}
        self._next_id = 0

    @property
    def active_ids(self) -> tuple[int, ...]:
        """Ids of the tracks alive now (seen, or missed at most ``max_missed`` frames)."""
        return tuple(sorted(self._tracks))

    def reset(self) -> None:
        """Forget every track; ids restart at 0."""
        self._tracks.clear()
        self._next_id = 0

    def _affinity(
        self, track: _Track, box: Box, landmarks: Points | None, iou: float
    ) -> float | None:
        if iou < self.iou_threshold:
            return None
        if (
            self.landmark_weight
            and landmarks is not None
            and track.landmarks is not None
            and len(landmarks) == len(track.landmarks)
        ):
            diagonal = math.hypot(track.box[2] - track.box[0], track.box[3] - track.box[1])
            distance = sum(
                math.hypot(p[0] - q[0], p[1] - q[1])
                for p, q in zip(landmarks, track.landmarks, strict=True)
            ) / len(landmarks)
            iou -= self.landmark_weight * distance / max(diagonal, 1e-6)
        return iou

    def update(
        self,
        boxes: Sequence[Sequence[float]],
        landmarks: Sequence[Points | None] | None = None,
    ) -> list[int]:
        """Match one frame's faces to the tracks and return each face's track id, in order.

        Args:
            boxes: The frame's face boxes ``(x1, y1, x2, y2)``.
            landmarks: Optional landmarks per face (same order; ``None`` entries allowed).

        Returns:
            One track id per box, distinct within the frame.
        """
        faces: list[Box] = []
        for i, box in enumerate(boxes):
            if len(box) != 4:
                raise InputError(f"boxes[{i}] must be (x1, y1, x2, y2), got {box!r}")
            faces.append((float(box[0]), float(box[1]), float(box[2]), float(box[3])))
        points: list[Points | None] = [None] * len(faces) if landmarks is None else list(landmarks)
        if len(points) != len(faces):
            raise InputError(f"{len(points)} landmark sets for {len(faces)} boxes")

        candidates: list[tuple[float, int, int]] = []
        if self._tracks and faces:
            # every (track, face) IoU at once; empty boxes overlap nothing
            ious = box_iou(
                torch.tensor([t.box for t in self._tracks.values()], dtype=torch.float64),
                torch.tensor(faces, dtype=torch.float64),
            ).nan_to_num_(0.0)
            for row, (track_id, track) in zip(ious.tolist(), self._tracks.items(), strict=True):
                for j, box in enumerate(faces):
                    affinity = self._affinity(track, box, points[j], row[j])
                    if affinity is not None:
                        candidates.append((affinity, track_id, j))
        # Highest affinity first; ties: older track (smaller id), then earlier face.
        candidates.sort(key=lambda c: (-c[0], c[1], c[2]))
        ids: list[int | None] = [None] * len(faces)
        matched: set[int] = set()
        for _, track_id, j in candidates:
            if track_id in matched or ids[j] is not None:
                continue
            matched.add(track_id)
            ids[j] = track_id
        for track_id in list(self._tracks):
            if track_id not in matched:
                track = self._tracks[track_id]
                track.missed += 1
                if track.missed > self.max_missed:
                    del self._tracks[track_id]
        out: list[int] = []
        for j, box in enumerate(faces):
            found = ids[j]
            if found is None:
                found = self._next_id
                self._next_id += 1
                self._tracks[found] = _Track(box, points[j])
            else:
                track = self._tracks[found]
                track.box, track.landmarks, track.missed = box, points[j], 0
            out.append(found)
        return out
