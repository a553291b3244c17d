#!/bin/bash
# Packs the benchmarks app and the Quickstart sample, with a .NET runtime, into .devicekit/ (git-ignored) for a GPU
# machine that has an NVIDIA driver and a CUDA build of PyTorch but no .NET SDK and no NuGet access. There,
# `bash .devicekit/run.sh env gpucheck gpubench quickstart` runs them against PyTorch's libtorch (see docs/gpu.md);
# `mixedbench` also times the same BootMAE step in that PyTorch (torch_bootmae_step.py, copied into the kit).
# The libtorch files are left out of the kit: the machine's own CUDA libtorch replaces them (under 64 MB in all).
set -euo pipefail
cd "$(dirname "$0")/../.."
dotnet build -c Release test/Microsoft.ML.BootMae.Benchmarks -v q -nologo
dotnet build -c Release samples/Quickstart -v q -nologo
kit=.devicekit
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$kit"
grep -qx '/.devicekit/' .git/info/exclude 2>/dev/null || echo '/.devicekit/' >> .git/info/exclude
for pair in test/Microsoft.ML.BootMae.Benchmarks/bin/Release/net10.0:app samples/Quickstart/bin/Release/net10.0:qs; do
  src=${pair%%:*}; dst=$stage/${pair##*:}
  mkdir -p "$dst/runtimes/linux-x64/native"
  cp "$src"/*.dll "$src"/*.json "$dst/"
  for f in "$src"/runtimes/linux-x64/native/*; do
    case $(basename "$f") in
      libtorch*|libc10*|libgomp*|libshm*|libaoti*|libbackend_with*|libjitbackend*|libnnapi*|*.dbg) ;;
      *) cp "$f" "$dst/runtimes/linux-x64/native/" ;;
    esac
  done
done
# xz -9's window spans both apps, so their shared assemblies are stored once.
(cd "$stage" && tar -cf - app qs) | xz -T0 -9 > "$kit/app.tar.xz"
root=$(dirname "$(readlink -f "$(command -v dotnet)")")
fx=$(ls -d "$root"/shared/Microsoft.NETCore.App/10.* | sort -V | tail -1)
(cd "$root" && tar -cf - dotnet host/fxr "${fx#$root/}") | xz -T0 -6 > "$kit/dotnet.tar.xz"
cp tools/gpu/run_kit.sh "$kit/run.sh"
cp tools/gpu/torch_bootmae_step.py "$kit/"
du -sh "$kit"/*
