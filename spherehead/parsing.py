"""The 20-class face/head parsing taxonomy used by datasets, the synthetic heads and the parsing branch.

The generator's ``toparsing`` head has 20 output channels (reference.md §2.3, §6.4); the real-side
taxonomy of SphereHead is unknown, so we fix our own. Indices 0-18 follow the CelebAMask-HQ order
used by the common BiSeNet face parsers, so their label maps drop in unchanged; index 19 adds facial
hair. "Left" and "right" are the *subject's* own sides: the subject looks toward world +z, so their
left is world +x, which is image right in the frontal view (reference.md §1.2). A horizontal flip
therefore swaps every left/right pair (see :data:`FLIP_LUT`). docs/datasets.md documents the table.
"""
from __future__ import annotations

import numpy as np

CLASS_NAMES = (
    "background",   # 0
    "skin",         # 1  face, forehead, visible scalp and other head skin
    "l_brow",       # 2  subject's left eyebrow (world +x)
    "r_brow",       # 3
    "l_eye",        # 4  visible eyeball: sclera, iris, pupil
    "r_eye",        # 5
    "eyeglasses",   # 6  frames, lenses (with what is seen through them), temples
    "l_ear",        # 7
    "r_ear",        # 8
    "earring",      # 9
    "nose",         # 10
    "mouth",        # 11 inner mouth / teeth between the lips
    "u_lip",        # 12
    "l_lip",        # 13
    "neck",         # 14
    "necklace",     # 15
    "cloth",        # 16 clothing, shoulders
    "hair",         # 17 head hair, front and back
    "hat",          # 18 headwear
    "facial_hair",  # 19 beard, moustache
)
NUM_CLASSES = len(CLASS_NAMES)
CLASS_INDEX = {name: i for i, name in enumerate(CLASS_NAMES)}

# Parts of the face proper: a correct full-head model shows these only when the camera sees the front.
FACE_CLASSES = tuple(CLASS_INDEX[n] for n in (
    "l_brow", "r_brow", "l_eye", "r_eye", "eyeglasses", "nose", "mouth", "u_lip", "l_lip", "facial_hair"))

LEFT_RIGHT_PAIRS = ((2, 3), (4, 5), (7, 8))


def _flip_lut() -> np.ndarray:
    """uint8 [256] lookup table: class index after a horizontal flip (l/r pairs swapped; >= 20 unchanged)."""
    lut = np.arange(256, dtype=np.uint8)
    for a, b in LEFT_RIGHT_PAIRS:
        lut[a], lut[b] = b, a
    return lut


FLIP_LUT = _flip_lut()

# Display colours (RGB uint8 [20, 3]) for contact sheets and docs; not used by any loss.
PALETTE = np.array([
    (0, 0, 0), (224, 172, 140), (110, 60, 30), (150, 90, 40), (40, 120, 255), (0, 200, 255),
    (255, 255, 0), (200, 0, 200), (255, 110, 255), (255, 0, 0), (255, 140, 0), (120, 0, 0),
    (220, 40, 60), (255, 100, 120), (100, 200, 100), (0, 120, 60), (60, 60, 200), (130, 70, 20),
    (0, 255, 180), (90, 90, 90)], dtype=np.uint8)
assert PALETTE.shape == (NUM_CLASSES, 3)


def colorize(parsing: np.ndarray) -> np.ndarray:
    """Class map ``[H, W]`` (ints in 0..19) -> RGB uint8 ``[H, W, 3]`` with :data:`PALETTE`."""
    return PALETTE[np.clip(parsing, 0, NUM_CLASSES - 1)]
