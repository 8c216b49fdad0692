#!/usr/bin/env bash
# Real Sentinel-2 data with sparse labels, end to end: stack -> tile -> train -> predict -> evaluate.
#
#   bash examples/germany_coastal.sh [DATA_DIR] [OUT_DIR] [MINUTES] [CONFIG]
#
# DATA_DIR holds the germany-coastal sample (default ../shared/data/real/germany-coastal): 20
# single-band monthly composites (June-October 2021, blue/green/red/nir, int16, nodata -10000)
# and hand-drawn field polygons: 20 for training, 30 for validation. Only those fields are drawn,
# so tiling and evaluation both use --sparse: chips teach nothing about the undrawn land, and the
# figures are recall-type figures and over/under-segmentation of the drawn validation fields.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA="${1:-$HERE/../shared/data/real/germany-coastal}"
OUT="${2:-$HERE/germany-output}"
MINUTES="${3:-10}"
CONFIG="${4:-$HERE/configs/unet_boundary_r18_cpu.yaml}"
FIELDSEG="${FIELDSEG:-$HERE/.venv/bin/fieldseg}"

if [[ ! -d "$DATA/labels" ]]; then
    echo "germany-coastal data not found in $DATA (pass its folder as the first argument)" >&2
    exit 1
fi
mkdir -p "$OUT"

bands=()
for date in 20210615 20210715 20210815 20210915 20211015; do
    for colour in blue green red nir; do
        bands+=("$DATA/s2_l3a_${date}_${colour}.tif")
    done
done
"$FIELDSEG" stack "${bands[@]}" -o "$OUT/scene.vrt" --overwrite

# Every drawn training field goes to train: 20 fields are too few to hold some back.
"$FIELDSEG" tile "$OUT/scene.vrt" --labels "$DATA/labels/coastal_landscape_train20.shp" \
    -o "$OUT/dataset" --sparse --chip-size 128 --overlap 32 --split 1,0,0 --overwrite

"$FIELDSEG" train "$OUT/dataset" -c "$CONFIG" -o "$OUT/run" \
    --epochs 1000 --max-minutes "$MINUTES" --overwrite

"$FIELDSEG" predict "$OUT/scene.vrt" -m "$OUT/run" -o "$OUT/fields.gpkg" \
    --chip-size 256 --overlap 64 --overwrite

"$FIELDSEG" evaluate "$OUT/fields.gpkg" "$DATA/labels/coastal_landscape_validation.shp" \
    --sparse -o "$OUT/report.json" --plot "$OUT/errors.png" --errors "$OUT/errors.gpkg" --overwrite
