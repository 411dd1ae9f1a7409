"""A browser demo of a `Predictor`: drop an image, see the segmentation (``atrous demo``).

The page (a Gradio Blocks app) shows the overlay with an opacity slider, a legend of the classes
present, their share of the image, the per-pixel confidence as a heat map, the latency, and
offers the label map as a PNG download (an indexed PNG whose pixel values are the class ids,
the same file ``atrous predict`` writes).

Gradio is an optional dependency (``pip install 'atrous[demo]'``) imported only here, and only
when a demo is built. The app is meant to run offline and to tell nobody about its use: Gradio's
analytics and version check are off, no share link is made unless asked, and the theme uses
fonts served by the app itself (no font CDN).
"""

from __future__ import annotations

import html
import inspect
import itertools
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..utils.extras import MissingExtraError

__all__ = [
    "DemoResult",
    "area_table",
    "build_demo",
    "colorbar_html",
    "import_gradio",
    "legend_html",
    "segment_for_demo",
]

Color = tuple[int, int, int]

GRADIO_MISSING = "the demo needs gradio: pip install 'atrous[demo]'"


def import_gradio() -> Any:
    """The `gradio` module with its telemetry turned off before it is first imported.

    Raises:
        MissingExtraError: gradio is not installed; the message names the extra to install.
    """
    # Read by gradio at import and at Blocks creation: no analytics, no version check request.
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        import gradio
    except ModuleNotFoundError as error:
        if error.name != "gradio":
            raise
        raise MissingExtraError(GRADIO_MISSING, name="gradio") from error
    return gradio


@dataclass
class DemoResult:
    """What the page shows for one image.

    Attributes:
        labels: int64 class ids ``(H, W)``.
        max_prob: float32 top-class probability ``(H, W)``.
        seconds: the prediction's wall time (preprocessing, model, argmax, confidence).
    """

    labels: np.ndarray
    max_prob: np.ndarray
    seconds: float


def segment_for_demo(predictor: Any, image: np.ndarray) -> DemoResult:
    """Run `predictor` on an RGB ``(H, W, 3)`` uint8 image, timing it."""
    start = time.perf_counter()
    result = predictor(image, return_confidence=True)
    seconds = time.perf_counter() - start
    return DemoResult(labels=result.labels, max_prob=result.confidence.max_prob, seconds=seconds)


def area_table(labels: np.ndarray, class_names: Sequence[str]) -> list[list[Any]]:
    """Rows ``[class id, name, area %]`` for the classes present, largest first.

    Pixels outside the classes (none for a model's argmax) are left out, so the shares of a
    prediction add up to 100.
    """
    labels = np.asarray(labels)
    counts = np.bincount(
        labels[(labels >= 0) & (labels < len(class_names))].ravel(), minlength=len(class_names)
    )
    total = max(int(labels.size), 1)
    order = sorted(np.flatnonzero(counts), key=lambda c: (-counts[c], c))
    return [[int(c), class_names[c], round(100.0 * counts[c] / total, 2)] for c in order]


def legend_html(
    class_ids: Sequence[int], class_names: Sequence[str], colors: Sequence[Color]
) -> str:
    """A row of colour swatches with class names (HTML), for the classes given."""
    if not class_ids:
        return "<p>Upload an image to see its classes.</p>"
    items = []
    for c in class_ids:
        r, g, b = (int(v) for v in colors[c])
        items.append(
            '<span class="atrous-legend-item">'
            f'<span class="atrous-swatch" style="background: rgb({r}, {g}, {b})"></span>'
            f"{html.escape(str(class_names[c]))}</span>"
        )
    return '<div class="atrous-legend">' + "".join(items) + "</div>"


def colorbar_html(*, cmap: str = "inferno", steps: int = 11) -> str:
    """A horizontal colour scale for the confidence heat map, 0 % to 100 %."""
    from atrous.utils.visualize import heatmap

    row = heatmap(np.linspace(0.0, 1.0, steps, dtype=np.float32)[None], cmap=cmap)[0]
    stops = ", ".join(f"rgb({r}, {g}, {b})" for r, g, b in row.tolist())
    return (
        '<div class="atrous-colorbar"><span>0 %</span>'
        f'<span class="atrous-colorbar-bar" style="background: linear-gradient(to right, {stops})">'
        "</span><span>100 % top-class probability</span></div>"
    )


_KEEP_DOWNLOADS = 16

# No "share" button: it offers to upload the picture to Hugging Face.
_IMAGE_BUTTONS = ["download", "fullscreen"]

_CSS = """
.atrous-legend { display: flex; flex-wrap: wrap; gap: 6px 14px; padding: 4px 2px; }
.atrous-legend-item { display: inline-flex; align-items: center; gap: 6px; font-size: 14px; }
.atrous-swatch { width: 16px; height: 16px; border: 1px solid #444; border-radius: 3px;
                 display: inline-block; }
.atrous-colorbar { display: flex; align-items: center; gap: 8px; font-size: 13px; }
.atrous-colorbar-bar { flex: 1; height: 12px; border: 1px solid #444; border-radius: 3px; }
"""


def build_demo(
    predictor: Any,
    *,
    class_names: Sequence[str],
    colors: Sequence[Color],
    examples: Sequence[str] = (),
    model_description: str = "",
    output_dir: str | os.PathLike[str] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """The Gradio Blocks app for `predictor`.

    Args:
        predictor: an `atrous.inference.Predictor` (anything called as
            ``predictor(image, return_confidence=True)`` returning a `SegmentationResult`).
        class_names: name of every class id.
        colors: RGB of every class id.
        examples: image files offered as clickable examples.
        model_description: one line shown under the title (config, weights, device).
        output_dir: where label PNGs for download are written (default: a temporary folder).

    Returns:
        ``(blocks, launch_kwargs)``: the app, and the `launch` arguments that belong with it
        (theme and CSS, which Gradio 6 takes at launch, and the privacy settings), limited to
        those the installed Gradio knows.
    """
    gr = import_gradio()
    from PIL import Image

    from atrous.inference.writer import write_label_map
    from atrous.utils.visualize import heatmap, overlay

    class_names = list(class_names)
    colors = [tuple(int(v) for v in c) for c in colors]
    out_root = Path(output_dir or tempfile.mkdtemp(prefix="atrous-demo-"))
    out_root.mkdir(parents=True, exist_ok=True)
    counter = itertools.count()

    def draw(state: dict | None, opacity: float, min_confidence: float):
        if not state:
            return None
        return overlay(
            state["image"],
            state["labels"],
            colors,
            opacity=float(opacity),
            confidence=state["max_prob"],
            min_confidence=float(min_confidence),
        )

    def segment(image: np.ndarray | None, opacity: float, min_confidence: float):
        if image is None:
            return None, None, legend_html([], class_names, colors), [], None, "", None
        image = np.ascontiguousarray(image[..., :3], dtype=np.uint8)
        try:
            result = segment_for_demo(predictor, image)
        except ValueError as error:  # over TEST.MAX_OUTPUT_MB, non-finite scores: say why
            raise gr.Error(str(error)[:500]) from None
        state = {"image": image, "labels": result.labels, "max_prob": result.max_prob}
        rows = area_table(result.labels, class_names)
        index = next(counter)
        folder = out_root / f"{index:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        # Gradio serves a copy from its own cache: only the latest few of ours are worth keeping.
        shutil.rmtree(out_root / f"{index - _KEEP_DOWNLOADS:06d}", ignore_errors=True)
        label_path = folder / "labels.png"
        write_label_map(label_path, result.labels, colors)
        h, w = result.labels.shape
        latency = (
            f"**Latency:** {1000 * result.seconds:.0f} ms for {w}×{h} pixels · "
            f"mean confidence {100 * float(result.max_prob.mean()):.1f} %"
        )
        confidence_picture = Image.fromarray(heatmap(result.max_prob))
        return (
            draw(state, opacity, min_confidence),
            confidence_picture,
            legend_html([r[0] for r in rows], class_names, colors),
            rows,
            str(label_path),
            latency,
            state,
        )

    with gr.Blocks(title="atrous demo", analytics_enabled=False) as blocks:
        gr.Markdown("## atrous: semantic segmentation demo")
        if model_description:
            gr.Markdown(model_description, elem_id="model-description")
        state = gr.State(None)
        with gr.Row(equal_height=False):
            with gr.Column(scale=1):
                image_in = gr.Image(
                    label="Image (drop, paste or click to upload)",
                    type="numpy",
                    image_mode="RGB",
                    sources=["upload", "clipboard"],
                    elem_id="input-image",
                )
                opacity = gr.Slider(
                    0.0, 1.0, value=0.5, step=0.05, label="Overlay opacity", elem_id="opacity"
                )
                min_confidence = gr.Slider(
                    0.0,
                    1.0,
                    value=0.0,
                    step=0.05,
                    label="Dim pixels whose confidence is below",
                    elem_id="min-confidence",
                )
                if examples:
                    gr.Examples(
                        examples=[[str(p)] for p in examples],
                        inputs=[image_in],
                        label="Examples from the test set",
                    )
            with gr.Column(scale=1):
                overlay_out = gr.Image(
                    label="Segmentation",
                    format="png",
                    interactive=False,
                    buttons=_IMAGE_BUTTONS,
                    elem_id="overlay",
                )
                legend = gr.HTML(legend_html([], class_names, colors), elem_id="legend")
                latency = gr.Markdown("", elem_id="latency")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1):
                confidence_out = gr.Image(
                    label="Confidence: top-class probability (dark: unsure, bright: sure)",
                    format="png",
                    interactive=False,
                    buttons=_IMAGE_BUTTONS,
                    elem_id="confidence",
                )
                gr.HTML(colorbar_html(), elem_id="colorbar")
            with gr.Column(scale=1):
                areas = gr.Dataframe(
                    headers=["id", "class", "area %"],
                    datatype=["number", "str", "number"],
                    interactive=False,
                    label="Area per class",
                    elem_id="areas",
                )
                label_file = gr.File(
                    label="Label map (PNG, pixel value = class id)",
                    interactive=False,
                    elem_id="label-file",
                )

        outputs = [overlay_out, confidence_out, legend, areas, label_file, latency, state]
        image_in.change(segment, [image_in, opacity, min_confidence], outputs)
        for slider in (opacity, min_confidence):
            slider.change(
                draw, [state, opacity, min_confidence], overlay_out, show_progress="hidden"
            )

    launch_kwargs = {
        "css": _CSS,
        "theme": gr.themes.Default(),  # its fonts are served by the app, not by a font CDN
        # Newer Gradio releases only: no run history kept in the browser (or offered for upload
        # to Hugging Face), no MCP server, no footer links to gradio.app.
        "run_history": False,
        "mcp_server": False,
        "footer_links": [],
    }
    accepted = inspect.signature(blocks.launch).parameters
    return blocks, {k: v for k, v in launch_kwargs.items() if k in accepted}
