#!/usr/bin/env bash
# The synthetic-data study of results/synthetic/, end to end and resumable (each step is skipped
# or continued when its output exists): train the GAN for an hour, score it, draw two synthetic
# datasets labelled by the bundled age model, run the synthetic suite, regenerate the report.
#
#   bash scripts/synthetic_study.sh            # AGE_ESTIMATION_DATA picks the data (see README)
#
# Generated faces, datasets and checkpoints stay outside the repository (../runs/); only scores
# and per-image predictions land in results/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
GAN=../runs/gan/utkface_dcgan64
TEACHER=models/age_model.pth
SYNTH=../runs/synthetic
MINUTES=${GAN_MINUTES:-60}

if [ -f "$GAN/last.pth" ]; then
  "$PY" scripts/train_gan.py --resume "$GAN" --minutes "$MINUTES"
else
  "$PY" scripts/train_gan.py --cfg configs/gan/utkface_dcgan64.yaml --minutes "$MINUTES"
fi
"$PY" scripts/gan_quality.py --generator "$GAN" --teacher "$TEACHER" --n 2000 \
  --json results/synthetic/gan_quality_dcgan64.json
# Ages as in the GAN's training data; and only the old ages (60-100), where the train split thins.
[ -f "$SYNTH/utkface_dcgan64_all/labels.csv" ] || "$PY" scripts/synthesize.py --generator "$GAN" \
  --teacher "$TEACHER" --n 10000 --seed 0 --out "$SYNTH/utkface_dcgan64_all"
[ -f "$SYNTH/utkface_dcgan64_old/labels.csv" ] || "$PY" scripts/synthesize.py --generator "$GAN" \
  --teacher "$TEACHER" --ages 60-100 --per-age 60 --seed 1 --out "$SYNTH/utkface_dcgan64_old"
# What made each set and what the teacher made of its faces (no images).
"$PY" scripts/synthetic_labels.py "$SYNTH/utkface_dcgan64_all" "$SYNTH/utkface_dcgan64_old" \
  --json results/synthetic/synthetic_labels.json
"$PY" scripts/run_suite.py configs/suites/synthetic.yaml
"$PY" scripts/make_report.py
