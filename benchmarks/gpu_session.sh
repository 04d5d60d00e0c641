#!/usr/bin/env bash
# One GPU lease (issue 13), as the device tool's calls of at most 10 minutes each, from the repository root.
# Build what travels first, here: `make gpu-pack` (.gpu/, ignored by git). Then, e.g.:
#
#   run(command="bash benchmarks/gpu_session.sh check", carry=[".gpu/wheels"])
#   run(command="bash benchmarks/gpu_session.sh pipeline", carry=[".gpu/wheels", ".gpu/av", ".gpu/clips"])
#   run(command="bash benchmarks/gpu_session.sh train", carry=[".gpu/wheels", ".gpu/data"])   # again: --resume
#
# check     nvidia-smi, the CUDA tests (tests/test_cuda.py), sr_speed at 28 -> 112 px (batch 1/32/128/512, fp32
#           and bf16, against bicubic on the same GPU) and a 300-step training probe (its s/step sets --steps)
# pipeline  pipeline_speed on the carried clips (default and cctv presets) and multicam with 1, 4 and 8 file cameras
# train     configs/train/paper_gpu.yaml for train.max_minutes, resumed from runs/paper_gpu (kept by a warm machine)
#           or from .gpu/resume (last.safetensors + last.optim.safetensors carried back from an earlier $OUT);
#           STEPS (environment) overrides the config's steps: keep it the same for every resume
#
# Everything worth keeping lands in $OUT (at most 8 files come back), or out/gpu when $OUT is unset.
set -euo pipefail
stage=${1:-}
case $stage in check | pipeline | train) ;; *)
    echo "usage: benchmarks/gpu_session.sh check|pipeline|train (got '$stage')" >&2
    exit 2
    ;;
esac
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD
py=${PY:-python3}  # the GPU image's Python, which holds CUDA PyTorch (never install torch there)

# the GPU image lacks these (MTCNN's weights ship in facenet-pytorch's wheel; filterpy: the tracker; av: PyAV)
$py -m pip install --quiet --no-deps --no-index .gpu/wheels/*.whl $(ls .gpu/av/*.whl 2>/dev/null || true)

case $stage in
check)
    {
        nvidia-smi
        $py -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
        $py -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 || echo "test_cuda: FAILED (exit $?)"
        $py train.py --config configs/train/paper_gpu.yaml --out /tmp/probe --steps 300 2>&1 | tail -5 || echo "probe: FAILED"
    } >"$OUT/check.txt" 2>&1
    for amp in fp32 bf16; do
        flag=$([ $amp = bf16 ] && echo "--amp bf16" || true)
        $py -m benchmarks.sr_speed --device cuda --lr 28 --out 112 --batch 1 32 128 512 --methods fast bicubic \
            --repeats 10 $flag --json "$OUT/sr_speed_$amp.json" --plot "$OUT/sr_speed_$amp.png" >>"$OUT/check.txt" 2>&1
    done
    ;;
pipeline)
    $py -m benchmarks.pipeline_speed --presets default cctv --clips .gpu/clips/*.mp4 --frames 300 --note "$(nvidia-smi -L | head -1)" \
        --json "$OUT/pipeline_speed.json" --plot "$OUT/pipeline_speed.png" >"$OUT/pipeline.txt" 2>&1
    $py -m benchmarks.multicam --cameras 1 4 8 --sources file --clip .gpu/clips/arcade_1080p_multiface.mp4 \
        --frames 150 --note "$(nvidia-smi -L | head -1)" --json "$OUT/multicam.json" --plot "$OUT/multicam.png" \
        >>"$OUT/pipeline.txt" 2>&1
    ;;
train)
    run=runs/paper_gpu
    if [ ! -f $run/last.optim.safetensors ] && [ -f .gpu/resume/last.optim.safetensors ]; then
        mkdir -p $run && cp .gpu/resume/last.safetensors .gpu/resume/last.optim.safetensors $run/
    fi
    resume=$([ -f $run/last.optim.safetensors ] && echo --resume || true)
    $py train.py --config configs/train/paper_gpu.yaml --out $run $resume ${STEPS:+--steps $STEPS} \
        >"$OUT/train.txt" 2>&1 || echo "train: exit $?" >>"$OUT/train.txt"
    cp $run/last.safetensors $run/last.optim.safetensors $run/log.jsonl "$OUT/" 2>/dev/null || true
    [ -f $run/best.safetensors ] && cp $run/best.safetensors "$OUT/"
    ;;
esac
ls -la "$OUT"
