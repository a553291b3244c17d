"""Writes safetensors files for the fixture and check scripts (the format the C# reader and safetensors.torch read).

Shared by make_interop_fixtures.py and check_official_checkpoint.py; the safetensors package is not in Debian 12.
"""
import json
import struct

import torch


def save_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous()
        code = "I64" if t.dtype == torch.int64 else "F32"
        t = t if code == "I64" else t.float()
        data = t.numpy().tobytes()
        header[name] = {"dtype": code, "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for b in blobs:
            f.write(b)
