#!/usr/bin/python3
"""Writes the PyTorch parity fixtures for the C# BootMAE engine.

A small BootMAE student (and an MAE-mode variant) is written out functionally here, with the spec's semantics
(docs: /work/shared/design/bootmae-reference.md), from seeded weights, images and explicit masks. The outputs, losses,
selected gradients, the weights after one AdamW step and the teacher after one EMA update are stored as safetensors
(written by hand: no safetensors package is needed) plus a small JSON with the configuration and scalars.

Run with Debian's python3-torch: /usr/bin/python3 tools/make_parity_fixtures.py
"""
import json
import math
import os
import struct

import torch
import torch.nn.functional as F

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "test", "Microsoft.ML.BootMae.Tests", "TestData", "parity")

CFG = dict(image=16, patch=4, channels=3, dim=32, depth=2, heads=2, mlp_ratio=4.0, reg_dim=24, reg_heads=2,
           pred_heads=4, dec_depth=2, shallow=0, deep=1, batch=3, num_keep=4, lr=1e-2, weight_decay=0.05,
           ema_momentum=0.5, feature_weight=1.0, mae_dec_depth=2)
GRID = CFG["image"] // CFG["patch"]
N = GRID * GRID
LN_EPS = 1e-6


def write_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous()
        if t.dtype == torch.int64:
            dtype, data = "I64", struct.pack("<%dq" % t.numel(), *t.flatten().tolist())
        else:
            dtype, data = "F32", struct.pack("<%df" % t.numel(), *t.float().flatten().tolist())
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def sincos_table(grid, dim):
    q = dim // 4
    omega = 1.0 / (10000.0 ** (torch.arange(q, dtype=torch.float32) / q))
    rows = torch.arange(grid, dtype=torch.float32).repeat_interleave(grid)  # i of token n = i*grid + j
    cols = torch.arange(grid, dtype=torch.float32).repeat(grid)
    a, b = rows[:, None] * omega[None], cols[:, None] * omega[None]
    table = torch.cat([a.sin(), a.cos(), b.sin(), b.cos()], dim=1)
    return torch.cat([torch.zeros(1, dim), table], dim=0)[None]


# ---- parameter shapes (keys are the reference's flat state-dict names) ----

def block_shapes(prefix, dim, heads, ctx_dim=None):
    inner = (dim // heads) * heads
    hidden = int(dim * CFG["mlp_ratio"])
    s = {
        "norm1.weight": [dim], "norm1.bias": [dim],
        "attn.qkv.weight": [3 * inner, dim], "attn.q_bias": [inner], "attn.v_bias": [inner],
        "attn.proj.weight": [dim, inner], "attn.proj.bias": [dim],
        "norm2.weight": [dim], "norm2.bias": [dim],
        "mlp.fc1.weight": [hidden, dim], "mlp.fc1.bias": [hidden],
        "mlp.fc2.weight": [dim, hidden], "mlp.fc2.bias": [dim],
    }
    if ctx_dim is not None:
        s.update({
            "norm3.weight": [dim], "norm3.bias": [dim], "norm4.weight": [ctx_dim], "norm4.bias": [ctx_dim],
            "c_attn.q.weight": [inner, dim], "c_attn.kv.weight": [2 * inner, ctx_dim],
            "c_attn.q_bias": [inner], "c_attn.v_bias": [inner],
            "c_attn.proj.weight": [dim, inner], "c_attn.proj.bias": [dim],
        })
    return {prefix + k: v for k, v in s.items()}


def encoder_shapes():
    d, p, c = CFG["dim"], CFG["patch"], CFG["channels"]
    s = {"patch_embed.proj.weight": [d, c, p, p], "patch_embed.proj.bias": [d], "cls_token": [1, 1, d],
         "norm.weight": [d], "norm.bias": [d]}
    for i in range(CFG["depth"]):
        s.update(block_shapes("blocks.%d." % i, d, CFG["heads"]))
    return s


def bootmae_shapes():
    d, r, p, c = CFG["dim"], CFG["reg_dim"], CFG["patch"], CFG["channels"]
    s = encoder_shapes()
    s.update({"down.weight": [r, d], "down.bias": [r], "mask_token": [1, 1, r], "decode_norm.weight": [r],
              "decode_norm.bias": [r], "lm_head.proj.weight": [r, c, p, p], "lm_head.proj.bias": [c],
              "down_1.weight": [d, d], "down_1.bias": [d], "mask_token_1": [1, 1, d], "decode_norm_1.weight": [d],
              "decode_norm_1.bias": [d], "lm_head_1.weight": [d, d], "lm_head_1.bias": [d]})
    for i in range(CFG["dec_depth"]):
        s.update(block_shapes("decode_blocks.%d." % i, r, CFG["reg_heads"], d))
        s.update(block_shapes("decode_blocks_1.%d." % i, d, CFG["pred_heads"], d))
    return s


def mae_shapes():
    d, r, p, c = CFG["dim"], CFG["reg_dim"], CFG["patch"], CFG["channels"]
    s = encoder_shapes()
    s.update({"decoder_embed.weight": [r, d], "decoder_embed.bias": [r], "mask_token": [1, 1, r],
              "decoder_norm.weight": [r], "decoder_norm.bias": [r], "decoder_pred.weight": [p * p * c, r],
              "decoder_pred.bias": [p * p * c]})
    for i in range(CFG["mae_dec_depth"]):
        s.update(block_shapes("decoder_blocks.%d." % i, r, CFG["reg_heads"]))
    return s


def make_weights(shapes, gen):
    w = {}
    for name, shape in shapes.items():
        fan_in = shape[1] if len(shape) == 2 else (math.prod(shape[1:]) if len(shape) == 4 else 1)
        std = 1.0 / math.sqrt(fan_in) if len(shape) in (2, 4) else 0.1
        t = torch.randn(*shape, generator=gen) * std
        if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name.endswith("norm3.weight") \
                or name.endswith("norm4.weight") or name.endswith("norm.weight") or name.endswith("norm_1.weight"):
            t = 1.0 + t
        w[name] = t.requires_grad_(True)
    return w


# ---- functional model ----

def ln(x, P, prefix):
    return F.layer_norm(x, (x.shape[-1],), P[prefix + ".weight"], P[prefix + ".bias"], LN_EPS)


def heads_out(q, k, v):
    scale = q.shape[-1] ** -0.5
    attn = ((q * scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    return attn @ v


def self_attn(x, P, pre, heads):
    B, n, _ = x.shape
    qb, vb = P[pre + "q_bias"], P[pre + "v_bias"]
    qkv = F.linear(x, P[pre + "qkv.weight"], torch.cat([qb, torch.zeros_like(vb), vb]))
    qkv = qkv.reshape(B, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
    o = heads_out(qkv[0], qkv[1], qkv[2]).transpose(1, 2).reshape(B, n, -1)
    return F.linear(o, P[pre + "proj.weight"], P[pre + "proj.bias"])


def cross_attn(x, ctx, P, pre, heads):
    B, n, _ = x.shape
    m = ctx.shape[1]
    vb = P[pre + "v_bias"]
    q = F.linear(x, P[pre + "q.weight"], P[pre + "q_bias"]).reshape(B, n, heads, -1).transpose(1, 2)
    kv = F.linear(ctx, P[pre + "kv.weight"], torch.cat([torch.zeros_like(vb), vb]))
    kv = kv.reshape(B, m, 2, heads, -1).permute(2, 0, 3, 1, 4)
    o = heads_out(q, kv[0], kv[1]).transpose(1, 2).reshape(B, n, -1)
    return F.linear(o, P[pre + "proj.weight"], P[pre + "proj.bias"])


def mlp(x, P, pre):
    h = F.gelu(F.linear(x, P[pre + "fc1.weight"], P[pre + "fc1.bias"]))
    return F.linear(h, P[pre + "fc2.weight"], P[pre + "fc2.bias"])


def block(x, P, pre, heads, ctx=None):
    x = x + self_attn(ln(x, P, pre + "norm1"), P, pre + "attn.", heads)
    if ctx is not None:
        x = x + cross_attn(ln(x, P, pre + "norm3"), ln(ctx, P, pre + "norm4"), P, pre + "c_attn.", heads)
    return x + mlp(ln(x, P, pre + "norm2"), P, pre + "mlp.")


def embed(images, P, pos):
    x = F.conv2d(images, P["patch_embed.proj.weight"], P["patch_embed.proj.bias"], stride=CFG["patch"])
    x = x.flatten(2).transpose(1, 2) + pos[:, 1:]
    cls = (P["cls_token"] + pos[:, :1]).expand(x.shape[0], -1, -1)
    return cls, x


def encoder_visible(images, P, pos, ids_keep):
    cls, x = embed(images, P, pos)
    x = torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, x.shape[2]))
    x = torch.cat([cls, x], 1)
    feats = {}
    for i in range(CFG["depth"]):
        x = block(x, P, "blocks.%d." % i, CFG["heads"])
        feats[i] = x
    return ln(x, P, "norm"), feats[CFG["shallow"]], feats[CFG["deep"]]


def encoder_full(images, P, pos):
    cls, x = embed(images, P, pos)
    x = torch.cat([cls, x], 1)
    for i in range(CFG["depth"]):
        x = block(x, P, "blocks.%d." % i, CFG["heads"])
    return x[:, 1:]


def assemble(proj, token, table, ids_masked, ids_restore):
    B, _, d = proj.shape
    tokens = token.expand(B, ids_masked.shape[1], d)
    if table is not None:
        tokens = tokens + torch.gather(table[:, 1:].expand(B, -1, -1), 1, ids_masked[..., None].expand(-1, -1, d))
    seq = torch.cat([proj[:, 1:], tokens], 1)
    seq = torch.gather(seq, 1, ids_restore[..., None].expand(-1, -1, d))
    return torch.cat([proj[:, :1], seq], 1)


def bootmae_forward(images, P, pos, de_pos, ids_shuffle, ids_restore):
    k = CFG["num_keep"]
    latent, shallow, deep = encoder_visible(images, P, pos, ids_shuffle[:, :k])
    x = assemble(F.linear(latent, P["down.weight"], P["down.bias"]), P["mask_token"], de_pos, ids_shuffle[:, k:], ids_restore)
    for i in range(CFG["dec_depth"]):
        x = block(x, P, "decode_blocks.%d." % i, CFG["reg_heads"], shallow)
    x = ln(x, P, "decode_norm")[:, 1:]
    B = x.shape[0]
    grid_in = x.transpose(1, 2).reshape(B, CFG["reg_dim"], GRID, GRID)
    pixels = F.conv_transpose2d(grid_in, P["lm_head.proj.weight"], P["lm_head.proj.bias"], stride=CFG["patch"])
    y = assemble(F.linear(latent, P["down_1.weight"], P["down_1.bias"]), P["mask_token_1"], pos, ids_shuffle[:, k:], ids_restore)
    for i in range(CFG["dec_depth"]):
        y = block(y, P, "decode_blocks_1.%d." % i, CFG["pred_heads"], deep)
    features = F.linear(ln(y, P, "decode_norm_1")[:, 1:], P["lm_head_1.weight"], P["lm_head_1.bias"])
    return latent, shallow, deep, pixels, features


def mae_forward(images, P, pos, dec_pos, ids_shuffle, ids_restore):
    k = CFG["num_keep"]
    latent, _, _ = encoder_visible(images, P, pos, ids_shuffle[:, :k])
    x = assemble(F.linear(latent, P["decoder_embed.weight"], P["decoder_embed.bias"]), P["mask_token"], None,
                 ids_shuffle[:, k:], ids_restore) + dec_pos
    for i in range(CFG["mae_dec_depth"]):
        x = block(x, P, "decoder_blocks.%d." % i, CFG["reg_heads"])
    return F.linear(ln(x, P, "decoder_norm")[:, 1:], P["decoder_pred.weight"], P["decoder_pred.bias"])


# ---- losses ----

def weight_mask(mask):
    m = mask.reshape(-1, 1, GRID, GRID)
    return (m * (1 + F.avg_pool2d(m, 3, stride=1, padding=1, count_include_pad=True))).reshape(mask.shape[0], N)


def to_pixels(v):
    p = CFG["patch"]
    return v.reshape(-1, 1, GRID, GRID).repeat_interleave(p, 2).repeat_interleave(p, 3)


def pixel_target(images):
    B, C, H, W = images.shape
    p = CFG["patch"]
    x = images.reshape(B, C, GRID, p, GRID, p)
    mean = x.mean(dim=(3, 5), keepdim=True)
    var = x.var(dim=(3, 5), unbiased=False, keepdim=True)
    return ((x - mean) / torch.sqrt(var + 1e-5)).reshape(B, C, H, W)


def pixel_loss(pred, images, mask, w):
    err = (pred - pixel_target(images)) ** 2
    return (to_pixels(w) * err).mean() / to_pixels(mask).mean()


def feature_loss(pred, teacher, mask, w):
    d = pred.shape[-1]
    t = F.layer_norm(teacher, (d,), eps=LN_EPS)
    f = F.layer_norm(pred, (d,), eps=LN_EPS)
    return (w[..., None] * (t - f) ** 2).sum() / (mask.sum() * d)


def patchify(images):
    B, C, _, _ = images.shape
    p = CFG["patch"]
    return images.reshape(B, C, GRID, p, GRID, p).permute(0, 2, 4, 3, 5, 1).reshape(B, N, p * p * C)


def mae_loss(pred, images, mask):
    t = patchify(images)
    t = (t - t.mean(-1, keepdim=True)) / (t.var(-1, unbiased=True, keepdim=True) + 1e-6) ** 0.5
    return (((pred - t) ** 2).mean(-1) * mask).sum() / mask.sum()


def no_decay(name, t):
    return t.dim() <= 1 or name.endswith(".bias") or name.split(".")[-1] in ("cls_token", "pos_embed")


def adamw_step(P):
    decay = [t for n, t in P.items() if not no_decay(n, t)]
    nod = [t for n, t in P.items() if no_decay(n, t)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": CFG["weight_decay"]},
                             {"params": nod, "weight_decay": 0.0}],
                            lr=CFG["lr"], betas=(0.9, 0.95), eps=1e-8)
    opt.step()


def make_masks(gen):
    B = CFG["batch"]
    ids_shuffle = torch.stack([torch.randperm(N, generator=gen) for _ in range(B)])
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(B, N)
    mask[:, :CFG["num_keep"]] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return ids_shuffle, ids_restore, mask


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(20220714)
    B, C, S = CFG["batch"], CFG["channels"], CFG["image"]
    images = torch.rand(B, C, S, S, generator=gen) * 2 - 1
    ids_shuffle, ids_restore, mask = make_masks(gen)
    pos = sincos_table(GRID, CFG["dim"])
    de_pos = sincos_table(GRID, CFG["reg_dim"])

    # BootMAE: student forward, teacher target, losses and gradients.
    P = make_weights(bootmae_shapes(), gen)
    initial = {k: v.detach().clone() for k, v in P.items()}
    latent, shallow, deep, pixels, features = bootmae_forward(images, P, pos, de_pos, ids_shuffle, ids_restore)
    teacher_weights = {k: v.detach().clone() for k, v in initial.items() if k in encoder_shapes()}
    with torch.no_grad():
        teacher = encoder_full(images, teacher_weights, pos)
    w = weight_mask(mask)
    lr_ = pixel_loss(pixels, images, mask, w)
    lp = feature_loss(features, teacher, mask, w)
    total = lr_ + CFG["feature_weight"] * lp
    total.backward()
    grads = {k: v.grad.detach().clone() for k, v in P.items()}
    with torch.no_grad():
        adamw_step(P)
        ema = {k: CFG["ema_momentum"] * teacher_weights[k] + (1 - CFG["ema_momentum"]) * P[k] for k in teacher_weights}

    out = {"in.images": images, "in.ids_shuffle": ids_shuffle, "in.ids_restore": ids_restore, "in.mask": mask,
           "table.pos_embed": pos, "table.de_pos_embed": de_pos,
           "out.latent": latent, "out.shallow": shallow, "out.deep": deep, "out.pixels": pixels,
           "out.features": features, "out.teacher": teacher, "out.weight_mask": w,
           "out.pixel_target": pixel_target(images)}
    out.update({"w." + k: v for k, v in initial.items()})
    out.update({"grad." + k: v for k, v in grads.items()})
    out.update({"step." + k: v.detach() for k, v in P.items()})
    out.update({"ema." + k: v for k, v in ema.items()})
    write_safetensors(os.path.join(OUT, "bootmae.safetensors"), out)

    # MAE mode: decoder output and loss.
    gen = torch.Generator().manual_seed(2021)
    Q = make_weights(mae_shapes(), gen)
    dec_pos = sincos_table(GRID, CFG["reg_dim"])
    pred = mae_forward(images, Q, pos, dec_pos, ids_shuffle, ids_restore)
    ml = mae_loss(pred, images, mask)
    ml.backward()
    mae = {"w." + k: v.detach() for k, v in Q.items()}
    mae.update({"out.pred": pred, "grad.decoder_pred.weight": Q["decoder_pred.weight"].grad,
                "grad.blocks.0.attn.qkv.weight": Q["blocks.0.attn.qkv.weight"].grad})
    write_safetensors(os.path.join(OUT, "mae.safetensors"), mae)

    scalars = {"config": CFG, "loss_pixel": lr_.item(), "loss_feature": lp.item(), "loss_total": total.item(),
               "loss_mae": ml.item(), "torch_version": torch.__version__}
    with open(os.path.join(OUT, "parity.json"), "w") as f:
        json.dump(scalars, f, indent=2)
        f.write("\n")
    print(json.dumps(scalars))


if __name__ == "__main__":
    main()
