"""Pictures of label maps; they live in `atrous.utils.visualize` (also used by the reports)."""

from atrous.utils.visualize import (
    colorize,
    draw_legend,
    heatmap,
    overlay,
    palette_array,
    save_palette_png,
)

__all__ = ["colorize", "draw_legend", "heatmap", "overlay", "palette_array", "save_palette_png"]
