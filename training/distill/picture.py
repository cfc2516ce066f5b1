"""The model card's picture: held-out frames side by side, the true clip | the teacher's decode | the small one."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

ROWS = ("true frames", "teacher (Wan VAE decoder)", "small decoder")


def side_by_side(path: str, truth: np.ndarray, teacher: np.ndarray, small: np.ndarray, columns: int = 6,
                 label_width: int = 150) -> None:
    """Write a PNG: one row per source, ``columns`` frames spread over the clip (each (T, H, W, 3) uint8)."""
    count = min(len(truth), len(teacher), len(small))
    picks = np.linspace(0, count - 1, columns).round().astype(int)
    height, width = truth.shape[1:3]
    sheet = Image.new("RGB", (label_width + columns * (width + 2), len(ROWS) * (height + 2) + 16), "white")
    draw = ImageDraw.Draw(sheet)
    for col, frame in enumerate(picks):
        draw.text((label_width + col * (width + 2) + 2, 2), f"frame {frame}", fill="black")
    for row, (name, video) in enumerate(zip(ROWS, (truth, teacher, small))):
        top = 16 + row * (height + 2)
        draw.text((4, top + height // 2 - 6), name, fill="black")
        for col, frame in enumerate(picks):
            sheet.paste(Image.fromarray(video[frame]), (label_width + col * (width + 2), top))
    sheet.save(path)
