#!/bin/bash
# Runs the kit made by tools/gpu/make_kit.sh on a GPU machine: the benchmarks app and the Quickstart against the
# machine's PyTorch libtorch (TORCH_LIB overrides where it is). Stages: env gpucheck gpubench gpubench-large mixedbench
# quickstart quicklong cpubench. Logs go to $OUT (default /tmp/out).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
K=$(cd "$(dirname "$0")" && pwd)
W=/tmp/bootmae-kit; mkdir -p $W
log() { echo "== $*"; }
# Unpacked afresh each time, so a rebuilt kit never runs stale binaries.
rm -rf $W/dotnet $W/app-root; mkdir -p $W/dotnet $W/app-root
tar -xJf $K/dotnet.tar.xz -C $W/dotnet && tar -xJf $K/app.tar.xz -C $W/app-root || { echo "cannot unpack the kit in $K"; exit 2; }
export DOTNET_ROOT=$W/dotnet PATH=$W/dotnet:$PATH DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_gcServer=0
PY=${PY:-python3}
TL=${TORCH_LIB:-$($PY -c 'import torch,os;print(os.path.join(os.path.dirname(torch.__file__),"lib"))' 2>/dev/null)}
log "torch lib: $TL"
$PY -c 'import torch;print("python torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.is_available())' 2>&1
export LD_LIBRARY_PATH=$TL:${LD_LIBRARY_PATH:-}
APP="dotnet $W/app-root/app/Microsoft.ML.BootMae.Benchmarks.dll"
# Symbols LibTorchSharp needs that this libtorch does not define (lazy binding tolerates unused ones).
if command -v nm >/dev/null; then
  nm -D --undefined-only $W/app-root/app/runtimes/linux-x64/native/libLibTorchSharp.so | awk '{print $2}' | grep -v '@' | sort -u > /tmp/need
  for f in $TL/libtorch.so $TL/libtorch_cpu.so $TL/libc10.so $TL/libtorch_cuda.so $TL/libc10_cuda.so; do [ -f $f ] && nm -D --defined-only $f | awk '{print $3}'; done | sort -u > /tmp/have
  comm -23 /tmp/need /tmp/have > $OUT/missing-symbols.txt
  log "LibTorchSharp symbols missing from this libtorch: $(wc -l < $OUT/missing-symbols.txt) of $(wc -l < /tmp/need)"; head -5 $OUT/missing-symbols.txt | c++filt 2>/dev/null || head -5 $OUT/missing-symbols.txt
fi
for stage in "$@"; do
  case $stage in
    env) nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; lscpu | grep -E "Model name|^CPU\(s\)"; grep -o -w 'amx_bf16\|avx512_bf16' /proc/cpuinfo | sort | uniq -c ;;
    gpucheck) log gpucheck; timeout 300 $APP gpucheck 2>&1 | tee $OUT/gpucheck.log ;;
    gpubench) log "cuda compare"; for p in tiny28 small32; do timeout 200 $APP compare --device cuda --preset $p --batch 128 --steps 20 --warmup 5 --rounds 2 2>&1 | tee -a $OUT/gpu-compare.log; done ;;
    gpubench-large) log "cuda compare, batch 1024"; for p in tiny28 small32; do timeout 200 $APP compare --device cuda --preset $p --batch 1024 --steps 20 --warmup 5 --rounds 2 2>&1 | tee -a $OUT/gpu-compare.log; done ;;
    mixedbench)
      # ViT-B/16 at 224², batch 256 (MB_BATCH): the BootMAE step in the engine (fp32; bf16 teacher + fp32 student, today's
      # default; the same with TF32; mixed student) and in this machine's PyTorch (fp32; bf16 autocast). About 4 minutes.
      # MB_DEVICE=cpu MB_BATCH=2 MB_STEPS=1 is a dry run of the same commands on a CPU.
      B=${MB_BATCH:-256}; S=${MB_STEPS:-10}; D=${MB_DEVICE:-cuda}; log "mixedbench: vitb16 on $D, batch $B, $S timed steps after 3"
      for p in "fp32" "bf16" "bf16 --tf32 true" "mixed"; do timeout 150 $APP step --device $D --preset vitb16 --batch $B --steps $S --warmup 3 --precision $p 2>&1 | tee -a $OUT/mixed-bench.log; done
      for p in fp32 bf16-autocast; do timeout 120 $PY $K/torch_bootmae_step.py --device $D --preset vitb16 --batch $B --steps $S --warmup 3 --precision $p 2>&1 | tee -a $OUT/mixed-bench.log; done ;;
    quickstart) log "quickstart (default settings, device Auto)"; ( time timeout ${QS_TIMEOUT:-240} dotnet $W/app-root/qs/Quickstart.dll --output /tmp/qs ${QS_ARGS:-} ) 2>&1 | tr '\r' '\n' | grep -v '^  *step ' | tee $OUT/quickstart.log; cp /tmp/qs/reconstructions.png $OUT/ 2>/dev/null ;;
    quicklong) log "quickstart, 40 pretraining epochs"; ( time timeout ${QL_TIMEOUT:-240} dotnet $W/app-root/qs/Quickstart.dll --epochs 40 --output /tmp/qs40 ) 2>&1 | tr '\r' '\n' | grep -v '^  *step ' | tee $OUT/quickstart-40.log; cp /tmp/qs40/pretraining-curves.png $OUT/curves-40.png 2>/dev/null; cp /tmp/qs40/reconstructions.png $OUT/reconstructions-40.png 2>/dev/null ;;
    cpubench) log "cpu compare, 2 threads"; timeout 300 $APP compare --preset tiny28 --batch 128 --steps 12 --warmup 3 --rounds 2 --threads 2 2>&1 | tee $OUT/cpu-compare.log ;;
    *) echo "unknown stage $stage" ;;
  esac
done
