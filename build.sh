#!/usr/bin/env bash
# Microsoft.ML.BootMae build script (Linux).
#   ./build.sh            set up (apt packages where needed), restore and build the solution (Release)
#   ./build.sh test       pack (as below), then run the whole test suite; ends with one line "N passed, N failed"
#   ./build.sh pack       create the NuGet package in artifacts/packages
#   ./build.sh fixtures   regenerate the PyTorch parity fixtures (installs Debian's python3-torch)
# Options: --cuda  use TorchSharp-cuda-linux instead of TorchSharp-cpu (your feed must serve it)
#          --debug build the Debug configuration
set -euo pipefail
cd "$(dirname "$0")"
root=$(pwd)

command=build
configuration=Release
runtime=cpu
for arg in "$@"; do
  case "$arg" in
    build|test|pack|fixtures) command=$arg ;;
    --cuda) runtime=cuda ;;
    --debug) configuration=Debug ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
  esac
done
props=(-c "$configuration" -p:BootMaeTorchRuntime="$runtime" -nologo)

apt_install() { # packages...: install the missing ones (needs root or sudo)
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo
  echo "build.sh: installing Debian packages: ${missing[*]}"
  $sudo apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

setup() {
  if ! command -v dotnet >/dev/null; then
    echo "build.sh: the .NET SDK 10 is required (https://dot.net); 'dotnet' is not on PATH." >&2
    exit 1
  fi
  if command -v dpkg >/dev/null && command -v apt-get >/dev/null; then
    # fonts for the text in charts and grids; gcc rebuilds the tiny ELF test fixtures when asked.
    apt_install fonts-dejavu-core
  fi
}

case "$command" in
  build)
    setup
    dotnet restore Microsoft.ML.BootMae.sln -p:BootMaeTorchRuntime="$runtime" -nologo || {
      [ "$runtime" = cuda ] && echo "build.sh: restore failed for --cuda: TorchSharp-cuda-linux is not served by your NuGet feed (it is not on this project's feed); add a feed that serves it, or build without --cuda." >&2
      exit 1; }
    dotnet build Microsoft.ML.BootMae.sln --no-restore "${props[@]}"
    ;;
  test)
    results="$root/artifacts/TestResults"
    rm -rf "$results"
    status=0
    # The notebook test restores Microsoft.ML.BootMae from the local feed artifacts/packages, as a user does: pack first.
    dotnet pack src/Microsoft.ML.BootMae/Microsoft.ML.BootMae.csproj "${props[@]}" -o "$root/artifacts/packages" || status=$?
    # Each test project writes its TRX into artifacts/TestResults/<project>/ (Directory.Build.targets).
    dotnet test Microsoft.ML.BootMae.sln "${props[@]}" --logger "trx" || status=$?
    passed=0; failed=0; total=0
    for trx in "$results"/*.trx "$results"/*/*.trx; do
      [ -f "$trx" ] || continue
      counters=$(grep -o '<Counters [^>]*>' "$trx" | head -1)
      get() { echo "$counters" | sed -n "s/.* $1=\"\([0-9]*\)\".*/\1/p"; }
      total=$((total + $(get total))); passed=$((passed + $(get passed)))
      failed=$((failed + $(get failed) + $(get error) + $(get timeout) + $(get aborted)))
    done
    if [ "$total" -eq 0 ]; then echo "build.sh: no test ran" >&2; status=1; fi
    [ "$failed" -gt 0 ] && status=1
    # A crashed test host can leave a TRX without failures: never report a failing run as all-green.
    [ "$status" -ne 0 ] && [ "$failed" -eq 0 ] && failed=1
    echo "$passed passed, $failed failed"
    exit $status
    ;;
  pack)
    setup
    dotnet pack src/Microsoft.ML.BootMae/Microsoft.ML.BootMae.csproj "${props[@]}" -o "$root/artifacts/packages"
    ;;
  fixtures)
    apt_install python3-torch gcc
    /usr/bin/python3 tools/make_parity_fixtures.py
    /usr/bin/python3 tools/make_trajectory_fixture.py
    /usr/bin/python3 tools/make_interop_fixtures.py
    # A checkpoint as the official run_pretraining.py saves it (torch.save), for the import test; the architecture is
    # OfficialCheckpointTests' (PretrainerTests.Tiny).
    /usr/bin/python3 tools/check_official_checkpoint.py write test/Microsoft.ML.BootMae.Tests/TestData/official/checkpoint-3.pth \
      test/Microsoft.ML.BootMae.Tests/TestData/official/expected.safetensors --config \
      '{"img_size":28,"patch_size":7,"in_chans":1,"embed_dim":32,"depth":2,"fea_list":[0,1],"num_heads":2,"mlp_ratio":4.0,"decoder_depth":1,"decode_dim":32,"mask_len":12,"weight_decay":0.05,"epoch":3,"epochs":10}'
    tools/make_elf_fixtures.sh
    ;;
esac
