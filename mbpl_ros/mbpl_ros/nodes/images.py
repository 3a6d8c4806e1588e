"""
Which camera image goes with which joint state, and when an image is too late; ROS-free.

The law of sample_collector and lqr_controller for a camera in the loop:

* The image of a step is the one whose stamp is nearest the stamp of the step's joint state,
  if it is within the tolerance (the experiment's camera.image_tolerance_s); ties go to the
  earlier image. In lockstep sim_robot stamps a step's image exactly like its joint state.
* A step's image is settled once no image still to come can be nearer: one has exactly the
  state's stamp, or an image stamped beyond the tolerance has arrived (images arrive in stamp
  order). sample_collector assembles a rollout from settled steps only, so its choice does not
  depend on when the images happened to arrive.
* A step of an image policy waits for its image: in lockstep until it is settled (so the
  controller acts on the image the collector records and `mbpl train` renders), in realtime for
  the nearest at hand within the tolerance (not delaying the command). A joint state that has
  waited longer than the timeout (the camera stopped, or sends old stamps) stops the policy:
  ImageWait.fault.
"""
from __future__ import annotations

import bisect
from collections import OrderedDict
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np


def default_tolerance_s(config) -> float:
    """Return image_tolerance_s by default: the experiment camera's, else half a period."""
    camera = getattr(config, "camera", None)
    if camera is not None:
        return float(camera.image_tolerance_s)
    return 0.5 * float(config.control_dt)


class ImageBuffer:
    """
    The latest `size` images by stamp (ns), each (H, W, 3) uint8.

    A later image with the same stamp replaces the earlier one; the oldest stamps go first.
    """

    def __init__(self, tolerance_ns: int, size: int) -> None:
        if tolerance_ns < 0 or size < 1:
            raise ValueError(f"ImageBuffer needs tolerance_ns >= 0 and size >= 1; got "
                             f"{tolerance_ns}, {size}")
        self.tolerance_ns = int(tolerance_ns)
        self.size = int(size)
        self._images: "OrderedDict[int, np.ndarray]" = OrderedDict()
        self._stamps: List[int] = []   # sorted

    def __len__(self) -> int:
        return len(self._stamps)

    @property
    def latest_stamp_ns(self) -> Optional[int]:
        """Return the newest stamp held (None: no image)."""
        return self._stamps[-1] if self._stamps else None

    def add(self, stamp_ns: int, image: np.ndarray) -> None:
        """Keep `image` (H, W, 3) uint8 stamped `stamp_ns`."""
        stamp_ns = int(stamp_ns)
        if stamp_ns in self._images:
            del self._images[stamp_ns]
        else:
            bisect.insort(self._stamps, stamp_ns)
        self._images[stamp_ns] = image
        while len(self._stamps) > self.size:
            oldest = self._stamps.pop(0)
            del self._images[oldest]

    def nearest(self, stamp_ns: int) -> Optional[Tuple[int, np.ndarray]]:
        """Return (stamp, image) nearest `stamp_ns` within the tolerance, or None."""
        stamp_ns = int(stamp_ns)
        i = bisect.bisect_left(self._stamps, stamp_ns)
        candidates = self._stamps[max(i - 1, 0):i + 1]
        if not candidates:
            return None
        best = min(candidates, key=lambda s: (abs(s - stamp_ns), s))
        if abs(best - stamp_ns) > self.tolerance_ns:
            return None
        return best, self._images[best]

    def settled(self, stamp_ns: int) -> bool:
        """Tell whether no image still to come can be nearer `stamp_ns` than those held."""
        stamp_ns = int(stamp_ns)
        latest = self.latest_stamp_ns
        return stamp_ns in self._images or (latest is not None
                                            and latest > stamp_ns + self.tolerance_ns)


@dataclass(frozen=True)
class Alignment:
    """
    The images of a trial's steps.

    `images` (T, H, W, 3) uint8 and `stamps_ns` (T,) when every step has one, else None;
    `missing` the steps without an image within the tolerance; `unsettled` the steps whose
    image may still come.
    """

    images: Optional[np.ndarray]
    stamps_ns: Optional[np.ndarray]
    missing: Tuple[int, ...]
    unsettled: Tuple[int, ...]


def align(buffer: ImageBuffer, state_stamps_ns: Sequence[int]) -> Alignment:
    """Return the image of each step (joint-state stamps (T,)) from `buffer`."""
    chosen, missing, unsettled = [], [], []
    for t, stamp in enumerate(np.asarray(state_stamps_ns, dtype=np.int64).tolist()):
        if not buffer.settled(stamp):
            unsettled.append(t)
        found = buffer.nearest(stamp)
        if found is None:
            missing.append(t)
        else:
            chosen.append(found)
    if missing or not chosen:
        return Alignment(None, None, tuple(missing), tuple(unsettled))
    shapes = {image.shape for _, image in chosen}
    if len(shapes) != 1:
        raise ValueError(f"the images of a trial have different shapes {sorted(shapes)}")
    return Alignment(np.stack([image for _, image in chosen]),
                     np.array([stamp for stamp, _ in chosen], dtype=np.int64), (),
                     tuple(unsettled))


class ImageWait:
    """
    How long the current joint state of an image-policy trial has waited for its image.

    wait(since) when a step cannot be taken for want of an image, `since` the arrival of its
    joint state (the first call starts the clock: so the wait is never shorter than the
    joint state's age, which the joint-state watchdog measures), stepped() when a step is
    taken; fault(now) says why the policy must stop once the wait exceeds timeout_s (times:
    time.monotonic()).
    """

    def __init__(self, timeout_s: float) -> None:
        if not timeout_s > 0:
            raise ValueError(f"ImageWait needs timeout_s > 0; got {timeout_s}")
        self.timeout_s = float(timeout_s)
        self.since: Optional[float] = None

    def wait(self, since: float) -> None:
        """Note that a step waits for its image (from `since`, unless it already waits)."""
        if self.since is None:
            self.since = float(since)

    def stepped(self) -> None:
        """Note that a step was taken: nothing waits."""
        self.since = None

    def fault(self, now: float, latest_image_stamp_ns: Optional[int],
              state_stamp_ns: Optional[int]) -> Optional[str]:
        """Return why the policy must stop (a step waited too long for its image), or None."""
        if self.since is None or now - self.since <= self.timeout_s:
            return None
        if latest_image_stamp_ns is None:
            seen = "no camera image has arrived"
        else:
            seen = (f"the latest camera image is stamped "
                    f"{(latest_image_stamp_ns - state_stamp_ns) * 1e-9:+.3f} s from the "
                    "joint state" if state_stamp_ns is not None else "an image arrived")
        return (f"the joint state waited {now - self.since:.3f} s (> image_timeout_s = "
                f"{self.timeout_s:g} s) for a camera image within the tolerance of its stamp; "
                f"{seen}")
