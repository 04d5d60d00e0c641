#!/usr/bin/env bash
# One GPU lease (issue 13), as the device tool's calls of at most 10 minutes each, from the repository root.
# Build what travels first, here: `make gpu-pack` (.gpu/, ignored by git). A machine goes back 30 s after a call,
# and each start costs a minute or more of the lease, so one call runs several stages in order, e.g.:
#
#   run(command="MAX_MINUTES=6 bash benchmarks/gpu_session.sh check train", carry=[".gpu/wheels", ".gpu/data"])
#   run(command="STEPS=N MAX_MINUTES=8.5 bash benchmarks/gpu_session.sh train", carry=[".gpu/wheels", ".gpu/data"])
#   run(command="bash benchmarks/gpu_session.sh pipeline", carry=[".gpu/wheels", ".gpu/av", ".gpu/clips"])
#
# check     nvidia-smi, the CUDA tests (tests/test_cuda.py), sr_speed at 28 -> 112 px (batch 1/32/128/512, fp32
#           and bf16, the shipped weights and the full-size model, against bicubic on the same GPU)
# pipeline  pipeline_speed on the carried clips (default and cctv presets) and multicam with 1, 4 and 8 file cameras,
#           then 4 and 8 with 2 detecting threads (detect.workers) and detector batches of 16, then the cctv preset
#           with and without detect.motion
# train     CONFIG (default configs/train/paper_gpu.yaml; paper_id_gpu.yaml: the identity loss) for MAX_MINUTES
#           (default: the config's), resumed from runs/<config's name> (kept
#           by a warm machine) or from .gpu/resume (last.safetensors + last.optim.safetensors carried back from an
#           earlier $OUT). STEPS (environment) overrides the config's steps. The total can be set once the first
#           run's log.jsonl gives the step rate: changing it on a resume is exact while both totals' decay points
#           (half) lie ahead
#
# Everything worth keeping lands in $OUT, or out/gpu when $OUT is unset: at most 8 files come back, so the check and
# pipeline stages each leave one tar (check.tar, pipeline.tar) and train leaves its 5 files.
set -euo pipefail
for stage in "${@:-}"; do
    case $stage in check | pipeline | train) ;; *)
        echo "usage: benchmarks/gpu_session.sh check|pipeline|train ... (got '$stage')" >&2
        exit 2
        ;;
    esac
done
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD
py=${PY:-python3}  # the GPU image's Python, which holds CUDA PyTorch (never install torch there)

# the GPU image lacks these (MTCNN's weights ship in facenet-pytorch's wheel; filterpy: the tracker; av: PyAV)
$py -m pip install --quiet --no-deps --no-index .gpu/wheels/*.whl $(ls .gpu/av/*.whl 2>/dev/null || true)

for stage in "$@"; do case $stage in
check)
    res=$(mktemp -d)
    {
        nvidia-smi
        $py -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
        $py -m pytest -v -p no:cacheprovider tests/test_cuda.py 2>&1 || echo "test_cuda: FAILED (exit $?)"
    } >"$res/check.txt" 2>&1
    for amp in fp32 bf16; do
        flag=$([ $amp = bf16 ] && echo "--amp bf16" || true)
        $py -m benchmarks.sr_speed --device cuda --lr 28 --out 112 --batch 1 32 128 512 --methods fast bicubic bicubic_device \
            --weights models/weights/arasfsr_paper.safetensors models/weights/arasfsr_lm.safetensors \
            config:configs/model/arasfsr_edsr.yaml --repeats 10 $flag --json "$res/sr_speed_$amp.json" --plot "$res/sr_speed_$amp.png" >>"$res/check.txt" 2>&1 || echo "sr_speed $amp: exit $?" >>"$res/check.txt"
    done
    tar -cf "$OUT/check.tar" -C "$res" .
    ;;
pipeline)
    res=$(mktemp -d)
    $py -m benchmarks.pipeline_speed --presets default cctv --clips .gpu/clips/*.mp4 --frames 300 --note "$(nvidia-smi -L | head -1)" \
        --json "$res/pipeline_speed.json" --plot "$res/pipeline_speed.png" >"$res/pipeline.txt" 2>&1 || echo "pipeline_speed: exit $?" >>"$res/pipeline.txt"
    $py -m benchmarks.multicam --cameras 1 4 8 --sources file --clip .gpu/clips/arcade_1080p_multiface.mp4 \
        --frames 150 --note "$(nvidia-smi -L | head -1)" --json "$res/multicam.json" --plot "$res/multicam.png" \
        >>"$res/pipeline.txt" 2>&1 || echo "multicam: exit $?" >>"$res/pipeline.txt"
    # The first lease: one process fell to 0.22x of separate processes at 8 cameras, its 16 detecting threads
    # queueing launch-bound MTCNN calls on one interpreter. The same with 2 threads and bigger detector batches:
    $py -m benchmarks.multicam --cameras 4 8 --sources file --clip .gpu/clips/arcade_1080p_multiface.mp4 \
        --frames 150 --set detect.workers=2 --set detect.batch=16 --note "$(nvidia-smi -L | head -1); detect.workers=2" \
        --json "$res/multicam_workers2.json" >>"$res/pipeline.txt" 2>&1 || echo "multicam workers 2: exit $?" >>"$res/pipeline.txt"
    # detect.motion (on in the cctv preset) on a GPU, where its fixed cost per part (measured on a CPU) is unknown:
    # the preset with and without it, on a generated still 720p scene and the carried clips
    clips=$(mktemp -d)
    sed 's/^  motion: true$/  motion: false/' configs/cctv.yaml >"$clips/cctv_nomotion.yaml"
    $py -c "from pipeline.demo import make_demo_clip as m; m('$clips/still_720p_one_face.mp4', 150, 15, (1280, 720))"
    $py -m benchmarks.pipeline_speed --presets "$clips/cctv_nomotion.yaml" cctv --frames 300 \
        --clips "$clips/still_720p_one_face.mp4" .gpu/clips/*.mp4 --note "$(nvidia-smi -L | head -1)" \
        --json "$res/pipeline_motion.json" >>"$res/pipeline.txt" 2>&1 || echo "pipeline_speed motion: exit $?" >>"$res/pipeline.txt"
    tar -cf "$OUT/pipeline.tar" -C "$res" .
    ;;
train)
    config=${CONFIG:-configs/train/paper_gpu.yaml}
    run=runs/$(basename "$config" .yaml)
    if [ ! -f $run/last.optim.safetensors ] && [ -f .gpu/resume/last.optim.safetensors ]; then
        mkdir -p $run && cp .gpu/resume/last.safetensors .gpu/resume/last.optim.safetensors $run/
    fi
    resume=$([ -f $run/last.optim.safetensors ] && echo --resume || true)
    $py train.py --config "$config" --out $run $resume ${STEPS:+--steps $STEPS} \
        ${MAX_MINUTES:+--max-minutes $MAX_MINUTES} >"$OUT/train.txt" 2>&1 || echo "train: exit $?" >>"$OUT/train.txt"
    cp $run/last.safetensors $run/last.optim.safetensors $run/log.jsonl "$OUT/" 2>/dev/null || true
    [ -f $run/best.safetensors ] && cp $run/best.safetensors "$OUT/"
    ;;
esac; done
ls -la "$OUT"
