"""How an evaluation is shown: a table for the terminal, a PNG map, and error layers for QGIS."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fieldseg.atomic_output import atomic_file

if TYPE_CHECKING:
    from fieldseg.evaluation import FieldEvaluation

#: One colour per field error class, shared by the PNG map and the QGIS styles (RGB).
ERROR_COLOURS: dict[str, tuple[int, int, int]] = {
    "tp": (26, 150, 65),
    "fn": (215, 25, 28),
    "fp": (44, 123, 182),
    "split": (253, 174, 97),
    "merged": (123, 50, 148),
}
ERROR_LABELS: dict[str, str] = {
    "tp": "matched (IoU > threshold)",
    "fn": "missed truth field",
    "fp": "false prediction",
    "split": "split (over-segmented)",
    "merged": "merged (under-segmented)",
}
TRUTH_LAYER = "truth"
PREDICTED_LAYER = "predicted"


def format_table(report: dict[str, Any]) -> str:
    """The headline figures of a report as aligned text."""
    obj = report["object"]
    counts = report["counts"]
    # with no predictions, precision is 0 by the matching rules (object_matching, rule 4);
    # say so, since the by-size rows show n/a where a bin has no predictions
    precision = _f(obj["precision"]) + (" (no predictions)" if obj["n_predicted"] == 0 else "")
    lines = [
        f"{counts['n_predicted']} predicted vs {counts['n_truth']} truth fields "
        f"(label mode: {report['label_mode']}; CRS {report['inputs']['crs']})",
        "",
        f"objects (IoU > {obj['iou_threshold']:.2f}, one to one)",
        f"  precision {precision}   recall {_f(obj['recall'])}   F1 {_f(obj['f1'])}"
        f"   (TP {obj['tp']}, FP {obj['fp']}, FN {obj['fn']})",
        f"  mean F1 over IoU 0.50:0.95   {_f(obj['mean_f1'])}",
        f"  over-segmentation:  {obj['n_split_truth']} truth fields split "
        f"({_pct(obj['split_rate'])})",
        f"  under-segmentation: {obj['n_merged_truth']} truth fields merged "
        f"({_pct(obj['merged_rate'])}) into {obj['n_merged_predictions']} predictions",
        "",
        "by size (truth fields by their size, predictions by their own)",
        f"  {'size':<8}{'truth':>7}{'recall':>8}{'pred':>7}{'prec.':>7}{'F1':>7}"
        f"{'split':>8}{'merged':>8}",
    ]
    for name, row in report["by_size"].items():
        lines.append(
            f"  {name:<8}{row['n_truth']:>7}{_f(row['recall']):>8}{row['n_predicted']:>7}"
            f"{_f(row['precision']):>7}{_f(row['f1']):>7}{_pct(row['split_rate']):>8}"
            f"{_pct(row['merged_rate']):>8}"
        )
    pixel = report.get("pixel")
    settings = report["settings"]
    if pixel:
        lines += [
            "",
            f"pixels ({settings['pixel_size_m']:g} m grid)",
            f"  extent IoU {_f(pixel.get('pixel_iou'))}   precision "
            f"{_f(pixel.get('pixel_precision'))}   recall {_f(pixel.get('pixel_recall'))}",
            f"  boundary F1 {_f(pixel.get('boundary_f1'))}   precision "
            f"{_f(pixel.get('boundary_precision'))}   recall {_f(pixel.get('boundary_recall'))}"
            f"   (tolerance {settings['boundary_tolerance_m']:g} m)",
        ]
    ap = report.get("mask_ap")
    lines.append("")
    if ap:
        lines.append(
            f"mask AP ({settings['ap_tile_px']} px tiles)   AP {_f(ap.get('ap'))}   "
            f"AP50 {_f(ap.get('ap50'))}   AP75 {_f(ap.get('ap75'))}"
        )
    else:
        lines.append(f"mask AP: skipped ({report.get('mask_ap_skipped')})")
    return "\n".join(lines)


def write_error_layers(
    evaluation: FieldEvaluation, path: str | os.PathLike[str], *, overwrite: bool = False
) -> Path:
    """Write the truth and predicted fields with their status as two styled GeoPackage layers.

    Layers ``truth`` and ``predicted`` hold ``field_id``, ``error``, ``matched``,
    ``matched_id``, ``iou``, ``area_ha``, ``size`` (and ``score``); each opens in QGIS
    coloured by ``error`` with the colours of the PNG map.
    """
    from fieldseg.qgis_style import add_layer_styles, categorized_style

    path = Path(path)
    if path.suffix.lower() != ".gpkg":
        from fieldseg.errors import ConfigError

        raise ConfigError(f"--errors writes a GeoPackage; name it *.gpkg, not {path.name}")
    layers = {TRUTH_LAYER: evaluation.truth, PREDICTED_LAYER: evaluation.predicted}
    classes = {
        TRUTH_LAYER: ("tp", "fn", "split", "merged"),
        PREDICTED_LAYER: ("tp", "fp", "split", "merged"),
    }
    with atomic_file(path, overwrite=overwrite) as tmp:
        for name, frame in layers.items():
            frame.to_file(
                tmp,
                layer=name,
                driver="GPKG",
                engine="pyogrio",
                geometry_type="MultiPolygon",
                promote_to_multi=True,
            )
        add_layer_styles(
            tmp,
            {
                name: categorized_style(
                    "error",
                    [(c, ERROR_LABELS[c], (*ERROR_COLOURS[c], 110)) for c in classes[name]],
                )
                for name in layers
            },
        )
    return path


#: The predictions that ``plot_errors`` outlines (every kind but a match), with legend labels.
OUTLINED_PREDICTIONS = {"fp": "false prediction", "split": "piece of a split field",
                        "merged": "merging prediction"}  # fmt: skip


def plot_errors(
    evaluation: FieldEvaluation, path: str | os.PathLike[str], *, overwrite: bool = False
) -> Path:
    """Draw a PNG map: truth fields filled by status, wrong predictions outlined by kind."""
    if Path(path).suffix.lower() != ".png":
        from fieldseg.errors import ConfigError

        raise ConfigError(f"--plot writes a PNG; name it *.png, not {Path(path).name}")
    # a bare Figure draws off screen without pyplot, so a notebook's backend is left alone
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    truth, predicted = evaluation.truth, evaluation.predicted
    report = evaluation.report
    figure = Figure(figsize=(10, 11), layout="constrained")
    axis = figure.subplots()
    handles = []
    for error in ("tp", "fn", "split", "merged"):
        part = truth[truth["error"] == error]
        colour = _rgb(ERROR_COLOURS[error])
        if not part.empty:
            part.plot(ax=axis, color=colour, alpha=0.55, edgecolor=colour, linewidth=0.3)
        handles.append(Patch(facecolor=colour, alpha=0.55, label=f"truth: {ERROR_LABELS[error]}"))
    for error, label in OUTLINED_PREDICTIONS.items():
        part = predicted[predicted["error"] == error]
        colour = _rgb(ERROR_COLOURS[error])
        if not part.empty:
            part.boundary.plot(ax=axis, color=colour, linewidth=0.8)
        handles.append(Line2D([], [], color=colour, linewidth=1.5, label=f"outline: {label}"))
    if evaluation.extent is not None and report["label_mode"] == "label_extent":
        from geopandas import GeoSeries

        GeoSeries([evaluation.extent], crs=truth.crs).boundary.plot(
            ax=axis, color="black", linewidth=1.0, linestyle="--"
        )
        handles.append(Line2D([], [], color="black", linestyle="--", label="label extent"))
    obj = report["object"]
    axis.set_title(
        f"object F1 {_f(obj['f1'])} (P {_f(obj['precision'])}, R {_f(obj['recall'])}); "
        f"{obj['n_split_truth']} split, {obj['n_merged_truth']} merged of {obj['n_truth']} "
        "truth fields"
    )
    axis.set_aspect("equal")
    axis.ticklabel_format(useOffset=False, style="plain")
    axis.tick_params(labelsize="small")
    figure.legend(handles=handles, loc="outside lower center", ncol=3, fontsize="small")
    with atomic_file(path, overwrite=overwrite) as tmp:
        figure.savefig(tmp, dpi=110, format="png")
    return Path(path)


def _rgb(colour: tuple[int, int, int]) -> tuple[float, float, float]:
    return (colour[0] / 255, colour[1] / 255, colour[2] / 255)


def _f(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"
