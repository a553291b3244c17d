#!/usr/bin/env python3
"""Builds the class-balanced Fashion-MNIST subset embedded in Microsoft.ML.BootMae.

Source: Debian's `dataset-fashion-mnist` package (idx ubyte .gz files under
/usr/share/datasets/fashion-mnist/), i.e. https://github.com/zalandoresearch/fashion-mnist,
Copyright (c) 2017 Zalando SE, MIT licence.

Selection: the first TRAIN_PER_CLASS images of each class from the training file and the first
TEST_PER_CLASS images of each class from the t10k file, kept in the source files' order.

Output (gzip, mtime 0 so the bytes depend only on the input and zlib): little-endian
    magic    8 bytes  b"BMFMNIST"
    int32    version (1)
    int32    rows (28), int32 cols (28), int32 classes (10)
    int32    train count, int32 test count
    then for train, then test:
        uint16[count]       index of each image in its Fashion-MNIST source file
        uint8[count]        label 0..9
        uint8[count*rows*cols]  pixels, row-major, 0 = background (white ink on black)

Usage: python3 tools/extract_fashion_mnist.py [source_dir] [output_file]
"""
import gzip
import os
import struct
import sys

TRAIN_PER_CLASS = 1000
TEST_PER_CLASS = 200
CLASSES = 10
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SOURCE = "/usr/share/datasets/fashion-mnist"
DEFAULT_OUTPUT = os.path.join(ROOT, "src", "Microsoft.ML.BootMae", "Data", "FashionMnist", "fashion-mnist-subset.bin.gz")


def load(source, prefix):
    with gzip.open(os.path.join(source, prefix + "-images-idx3-ubyte.gz")) as f:
        images = f.read()
    with gzip.open(os.path.join(source, prefix + "-labels-idx1-ubyte.gz")) as f:
        labels = f.read()
    magic, count, rows, cols = struct.unpack(">IIII", images[:16])
    if magic != 2051:
        raise SystemExit(f"{prefix}: bad image magic {magic}")
    lmagic, lcount = struct.unpack(">II", labels[:8])
    if lmagic != 2049 or lcount != count:
        raise SystemExit(f"{prefix}: bad label file (magic {lmagic}, count {lcount} vs {count})")
    return images[16:], labels[8:], count, rows, cols


def select(source, prefix, per_class):
    pixels, labels, count, rows, cols = load(source, prefix)
    size = rows * cols
    taken = [0] * CLASSES
    indices = []
    for i in range(count):
        label = labels[i]
        if taken[label] < per_class:
            taken[label] += 1
            indices.append(i)
    if taken != [per_class] * CLASSES:
        raise SystemExit(f"{prefix}: not enough images per class: {taken}")
    body = struct.pack(f"<{len(indices)}H", *indices)
    body += bytes(labels[i] for i in indices)
    body += b"".join(pixels[i * size:(i + 1) * size] for i in indices)
    return body, len(indices), rows, cols


def main():
    source = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_SOURCE
    output = sys.argv[2] if len(sys.argv) > 2 else DEFAULT_OUTPUT
    train, train_count, rows, cols = select(source, "train", TRAIN_PER_CLASS)
    test, test_count, trows, tcols = select(source, "t10k", TEST_PER_CLASS)
    if (rows, cols) != (trows, tcols):
        raise SystemExit("train and test image sizes differ")
    header = b"BMFMNIST" + struct.pack("<6i", 1, rows, cols, CLASSES, train_count, test_count)
    with open(output, "wb") as raw:
        # GzipFile with mtime=0 and no file name keeps the output reproducible.
        with gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=raw, mtime=0) as f:
            f.write(header + train + test)
    print(f"wrote {output}: {train_count} train + {test_count} test images, {os.path.getsize(output)} bytes")


if __name__ == "__main__":
    main()
