#!/usr/bin/python3
"""Writes the PyTorch-interop fixtures: a tiny MAE/timm-style ViT encoder saved with torch.save (.pth, with a fused
qkv bias whose key part is non-zero) and the tokens PyTorch computes for a few images, so the C# import can be checked
against PyTorch itself. Run with Debian's python3-torch: /usr/bin/python3 tools/make_interop_fixtures.py
"""
import collections
import json
import os
import struct

import torch
import torch.nn.functional as F

OUT = os.path.join(os.path.dirname(__file__), "..", "test", "Microsoft.ML.BootMae.Tests", "TestData", "interop")
IMAGE, PATCH, CHANNELS, DIM, DEPTH, HEADS = 16, 4, 3, 32, 2, 2


def save_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        data = tensors[name].detach().contiguous().float().numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for b in blobs:
            f.write(b)


def layer_norm(x, w, b):
    return F.layer_norm(x, (x.shape[-1],), w, b, eps=1e-6)


def encoder_tokens(sd, images):
    """cls + all patches -> blocks -> final LN, written out (no fused attention in torch 1.13)."""
    x = F.conv2d(images, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=PATCH)
    x = x.flatten(2).transpose(1, 2) + sd["pos_embed"][:, 1:]
    cls = (sd["cls_token"] + sd["pos_embed"][:, :1]).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], 1)
    hd = DIM // HEADS
    for i in range(DEPTH):
        p = f"blocks.{i}."
        h = layer_norm(x, sd[p + "norm1.weight"], sd[p + "norm1.bias"])
        qkv = F.linear(h, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"])
        B, T, _ = qkv.shape
        q, k, v = qkv.reshape(B, T, 3, HEADS, hd).permute(2, 0, 3, 1, 4)
        a = ((q @ k.transpose(-2, -1)) * hd ** -0.5).softmax(-1)
        h = (a @ v).transpose(1, 2).reshape(B, T, DIM)
        x = x + F.linear(h, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        h = layer_norm(x, sd[p + "norm2.weight"], sd[p + "norm2.bias"])
        h = F.linear(F.gelu(F.linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])), sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
        x = x + h
    return layer_norm(x, sd["norm.weight"], sd["norm.bias"])


def main():
    g = torch.Generator().manual_seed(1234)
    r = lambda *s, std=0.2: torch.randn(*s, generator=g) * std
    n = (IMAGE // PATCH) ** 2
    sd = {
        "cls_token": r(1, 1, DIM), "pos_embed": r(1, n + 1, DIM, std=0.5),
        "patch_embed.proj.weight": r(DIM, CHANNELS, PATCH, PATCH), "patch_embed.proj.bias": r(DIM),
        "norm.weight": 1 + r(DIM), "norm.bias": r(DIM),
        # Decoder keys of an MAE checkpoint: the import must ignore them.
        "decoder_embed.weight": r(16, DIM), "mask_token": r(1, 1, 16),
    }
    sd["pos_embed"][:, 0] = 0
    for i in range(DEPTH):
        p = f"blocks.{i}."
        sd.update({
            p + "norm1.weight": 1 + r(DIM), p + "norm1.bias": r(DIM),
            p + "attn.qkv.weight": r(3 * DIM, DIM), p + "attn.qkv.bias": r(3 * DIM, std=1.0),
            p + "attn.proj.weight": r(DIM, DIM), p + "attn.proj.bias": r(DIM),
            p + "norm2.weight": 1 + r(DIM), p + "norm2.bias": r(DIM),
            p + "mlp.fc1.weight": r(4 * DIM, DIM), p + "mlp.fc1.bias": r(4 * DIM),
            p + "mlp.fc2.weight": r(DIM, 4 * DIM), p + "mlp.fc2.bias": r(DIM),
        })
    images01 = torch.rand(3, CHANNELS, IMAGE, IMAGE, generator=g)
    with torch.no_grad():
        tokens = encoder_tokens(sd, images01 * 2 - 1)
    os.makedirs(OUT, exist_ok=True)
    torch.save(collections.OrderedDict(sd), os.path.join(OUT, "mae_style_encoder.pth"))
    save_safetensors(os.path.join(OUT, "mae_style_encoder.safetensors"), sd)
    save_safetensors(os.path.join(OUT, "mae_style_expected.safetensors"), {"images01": images01, "tokens": tokens})
    print("wrote", OUT, "torch", torch.__version__)


if __name__ == "__main__":
    main()
