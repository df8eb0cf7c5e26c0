#!/usr/bin/env bash
# The GPU rows of docs/benchmarks.md (issue 39), prepared on the CPU for a session lent a GPU:
# run from the repository root once the environment is installed there. The CNN families at
# N = 10 and 100, DINO and Deformable DETR at their default layer, then where a DINO box's time goes
# (torch.profiler's operators). About 10 minutes on an H100; set QUICK=1 for 3 minutes.
set -euo pipefail
if [[ "${QUICK:-0}" == 1 ]]; then
    n=(10); repeats=1
else
    n=(10 100); repeats=3
fi
python - <<'PY'  # whether the rows are indicative (mmcv's ops not compiled for CUDA)
import torch, mmcv.ops
boxes = torch.rand(4, 4, device='cuda'); boxes[:, 2:] += 1
try:
    mmcv.ops.nms(boxes, torch.rand(4, device='cuda'), 0.5); compiled = 'yes'
except Exception as error:
    compiled = f'no ({type(error).__name__})'
print('torch', torch.__version__, torch.cuda.get_device_name(0), '; mmcv ops on CUDA:', compiled)
PY
python benchmarks/speed.py --device cuda:0 --models retinanet_r50 yolox_s faster_rcnn_r50 \
    --n "${n[@]}" --repeats "$repeats" --memory-n 0 --naive-max 3
python benchmarks/speed.py --device cuda:0 --models dino_r50_encoder deformable_detr_r50_encoder --n "${n[@]}" --repeats 1 \
    --memory-n 0 --naive-max 1
python benchmarks/profile_boxes.py --model dino_r50_encoder --n 10 --device cuda:0
