#!/usr/bin/env bash
# Builds the tiny ELF libraries that ElfVersionPatcherTests use, so the patcher is tested without libtorch.
# A stand-in "libstdc++.so.6" defines GLIBCXX_3.4, 3.4.30 and 3.4.32; consumers bind symbols to those versions
# the way LibTorchSharp 0.107.0 does. Usage: tools/make_elf_fixtures.sh [output-folder]
set -euo pipefail
out=${1:-$(dirname "$0")/../test/Microsoft.ML.BootMae.Tests/TestData/elf}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cat > "$work/fake.map" <<'MAP'
GLIBCXX_3.4 { global: base_function; local: *; };
GLIBCXX_3.4.30 { global: real_function; } GLIBCXX_3.4;
GLIBCXX_3.4.32 { global: _ZSt21ios_base_library_initv; newer_function; } GLIBCXX_3.4.30;
MAP
cat > "$work/fake.c" <<'C'
void base_function(void) {}
void real_function(void) {}
void newer_function(void) {}
void _ZSt21ios_base_library_initv(void) {}
C
gcc -shared -fPIC -O1 -s -Wl,-soname,libstdc++.so.6 -Wl,--version-script="$work/fake.map" -o "$work/libstdc++.so.6" "$work/fake.c"

build_consumer() { # name, C source
  printf '%s\n' "$2" > "$work/$1.c"
  gcc -shared -fPIC -O1 -s -Wl,--no-as-needed -o "$work/$1.so" "$work/$1.c" "$work/libstdc++.so.6"
}
# Like LibTorchSharp: needs 3.4.30 for real work and 3.4.32 only for the never-called marker.
build_consumer marker 'void base_function(void); void real_function(void); void _ZSt21ios_base_library_initv(void);
void use(void) { base_function(); real_function(); }
void *keep_marker(void) { return (void *)&_ZSt21ios_base_library_initv; }'
# Binds a function that is really called to 3.4.32: weakening it would be unsafe.
build_consumer newer 'void newer_function(void); void _ZSt21ios_base_library_initv(void);
void use(void) { newer_function(); }
void *keep_marker(void) { return (void *)&_ZSt21ios_base_library_initv; }'
# Needs nothing newer than 3.4.30.
build_consumer old 'void real_function(void); void use(void) { real_function(); }'

mkdir -p "$out"
cp "$work/libstdc++.so.6" "$out/fake-libstdc++.so.6"
cp "$work/marker.so" "$out/needs-marker.so"
cp "$work/newer.so" "$out/needs-newer-function.so"
cp "$work/old.so" "$out/needs-3.4.30-only.so"
ls -l "$out"
