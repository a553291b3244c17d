#!/usr/bin/env python3
"""Times one BootMAE pretraining step in plain PyTorch, to set beside the engine's `step` command (tools/gpu/run_kit.sh,
stage `mixedbench`; docs/gpu.md).

The step is the engine's: the student encoder on cls + the visible 25% of the patches, the pixel regressor (cross-
attention on the shallow block's output, ConvTranspose2d head) and the feature predictor (cross-attention on the deep
block's output) on the full sequence, the momentum teacher on the whole image without gradients, the weighted pixel
loss on per-patch normalised targets plus the feature loss on batch-standardised, LayerNormed teacher features, AdamW
(no weight decay on biases, norms, cls token and mask tokens) and the EMA update. BEiT-style attention: one qkv matrix
without bias plus q and v biases. Masks are uniform random with the engine's count of masked patches (the engine's
block-wise masks cost the same in the network). Images are made once on the host and copied to the device each step,
as the engine copies each batch.

--precision fp32: everything fp32 (TF32 off). bf16-autocast: torch.autocast(bfloat16) around the forwards and losses
(the teacher too), fp32 master weights and optimizer state, no GradScaler (bf16 needs none). Prints one JSON line.

Runs anywhere PyTorch does (a CPU dry run: --device cpu --preset tiny); PyTorch 1.13 lacks
scaled_dot_product_attention and fused AdamW, so those fall back to the explicit product and the foreach AdamW.
"""
import argparse
import json
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

PRESETS = {
    # ViT-B/16 at 224² with the paper's decoders (BootMaeArchitecture.VitBase16).
    "vitb16": dict(image=224, patch=16, channels=3, dim=768, depth=12, heads=12, reg_dim=512, reg_heads=12,
                   pred_heads=12, dec_depth=2, shallow=0, deep=11),
    # The parity fixture's shape, for a quick CPU dry run.
    "tiny": dict(image=16, patch=4, channels=3, dim=32, depth=2, heads=2, reg_dim=24, reg_heads=2, pred_heads=4,
                 dec_depth=2, shallow=0, deep=1),
}
LN_EPS = 1e-6
SDPA = getattr(F, "scaled_dot_product_attention", None)


def sincos(grid, dim):
    q = dim // 4
    omega = 1.0 / (10000.0 ** (torch.arange(q, dtype=torch.float32) / q))
    rows = torch.arange(grid, dtype=torch.float32).repeat_interleave(grid)
    cols = torch.arange(grid, dtype=torch.float32).repeat(grid)
    a, b = rows[:, None] * omega[None], cols[:, None] * omega[None]
    return torch.cat([torch.zeros(1, dim), torch.cat([a.sin(), a.cos(), b.sin(), b.cos()], 1)], 0)[None]


def attend(q, k, v):
    if SDPA is not None:
        return SDPA(q, k, v)
    return ((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)).softmax(-1) @ v


class Attention(nn.Module):
    def __init__(self, dim, heads, ctx_dim=None):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        inner = self.head_dim * heads
        self.cross = ctx_dim is not None
        if self.cross:
            self.q = nn.Linear(dim, inner, bias=False)
            self.kv = nn.Linear(ctx_dim, 2 * inner, bias=False)
        else:
            self.qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(inner))
        self.v_bias = nn.Parameter(torch.zeros(inner))
        self.proj = nn.Linear(inner, dim)

    def forward(self, x, ctx=None):
        b, n, _ = x.shape
        h, d = self.heads, self.head_dim
        if self.cross:
            m = ctx.shape[1]
            q = F.linear(x, self.q.weight, self.q_bias).reshape(b, n, h, d).transpose(1, 2)
            kv = F.linear(ctx, self.kv.weight, torch.cat([torch.zeros_like(self.v_bias), self.v_bias]))
            k, v = kv.reshape(b, m, 2, h, d).permute(2, 0, 3, 1, 4)
        else:
            bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
            q, k, v = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, h, d).permute(2, 0, 3, 1, 4)
        return self.proj(attend(q, k, v).transpose(1, 2).reshape(b, n, h * d))


class Block(nn.Module):
    def __init__(self, dim, heads, ctx_dim=None):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=LN_EPS), Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        if ctx_dim is not None:
            self.norm3, self.norm4 = nn.LayerNorm(dim, eps=LN_EPS), nn.LayerNorm(ctx_dim, eps=LN_EPS)
            self.c_attn = Attention(dim, heads, ctx_dim)
        else:
            self.c_attn = None

    def forward(self, x, ctx=None):
        x = x + self.attn(self.norm1(x))
        if self.c_attn is not None:
            x = x + self.c_attn(self.norm3(x), self.norm4(ctx))
        return x + self.mlp(self.norm2(x))


class Encoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.patch_embed = nn.Conv2d(c["channels"], c["dim"], c["patch"], stride=c["patch"])
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c["dim"]))
        self.register_buffer("pos_embed", sincos(c["image"] // c["patch"], c["dim"]))
        self.blocks = nn.ModuleList(Block(c["dim"], c["heads"]) for _ in range(c["depth"]))
        self.norm = nn.LayerNorm(c["dim"], eps=LN_EPS)

    def embed(self, images, ids=None):
        x = self.patch_embed(images).flatten(2).transpose(1, 2) + self.pos_embed[:, 1:]
        if ids is not None:
            x = torch.gather(x, 1, ids[..., None].expand(-1, -1, x.shape[2]))
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        return torch.cat([cls, x], 1)

    def visible(self, images, ids_keep):
        x, shallow, deep = self.embed(images, ids_keep), None, None
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            shallow = x if i == self.c["shallow"] else shallow
            deep = x if i == self.c["deep"] else deep
        return self.norm(x), shallow, deep

    def full(self, images):
        x = self.embed(images)
        for blk in self.blocks:
            x = blk(x)
        return x[:, 1:]


def assemble(proj, token, table, ids_masked, ids_restore):
    b, _, d = proj.shape
    tokens = token.expand(b, ids_masked.shape[1], d).to(proj.dtype)
    tokens = tokens + torch.gather(table[:, 1:].expand(b, -1, -1), 1, ids_masked[..., None].expand(-1, -1, d))
    seq = torch.gather(torch.cat([proj[:, 1:], tokens], 1), 1, ids_restore[..., None].expand(-1, -1, d))
    return torch.cat([proj[:, :1], seq], 1)


class Student(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c, d, r, g = c, c["dim"], c["reg_dim"], c["image"] // c["patch"]
        self.encoder = Encoder(c)
        self.down = nn.Linear(d, r)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, r))
        self.register_buffer("de_pos_embed", sincos(g, r))
        self.decode_blocks = nn.ModuleList(Block(r, c["reg_heads"], d) for _ in range(c["dec_depth"]))
        self.decode_norm = nn.LayerNorm(r, eps=LN_EPS)
        self.lm_head = nn.ConvTranspose2d(r, c["channels"], c["patch"], stride=c["patch"])
        self.down_1 = nn.Linear(d, d)
        self.mask_token_1 = nn.Parameter(torch.zeros(1, 1, d))
        self.decode_blocks_1 = nn.ModuleList(Block(d, c["pred_heads"], d) for _ in range(c["dec_depth"]))
        self.decode_norm_1 = nn.LayerNorm(d, eps=LN_EPS)
        self.lm_head_1 = nn.Linear(d, d)

    def forward(self, images, ids_keep, ids_masked, ids_restore):
        g = self.c["image"] // self.c["patch"]
        latent, shallow, deep = self.encoder.visible(images, ids_keep)
        x = assemble(self.down(latent), self.mask_token, self.de_pos_embed, ids_masked, ids_restore)
        for blk in self.decode_blocks:
            x = blk(x, shallow)
        x = self.decode_norm(x)[:, 1:]
        pixels = self.lm_head(x.transpose(1, 2).reshape(x.shape[0], -1, g, g))
        y = assemble(self.down_1(latent), self.mask_token_1, self.encoder.pos_embed, ids_masked, ids_restore)
        for blk in self.decode_blocks_1:
            y = blk(y, deep)
        return pixels, self.lm_head_1(self.decode_norm_1(y)[:, 1:])


def losses(c, pixels, features, teacher, images, mask):
    g, p = c["image"] // c["patch"], c["patch"]
    pixels, features, teacher = pixels.float(), features.float(), teacher.float()
    m = mask.reshape(-1, 1, g, g)
    w = (m * (1 + F.avg_pool2d(m, 3, stride=1, padding=1, count_include_pad=True))).reshape(mask.shape[0], -1)
    b, ch, hh, ww = images.shape
    x = images.reshape(b, ch, g, p, g, p)
    target = ((x - x.mean((3, 5), keepdim=True)) / torch.sqrt(x.var((3, 5), unbiased=False, keepdim=True) + 1e-5)).reshape(b, ch, hh, ww)
    up = lambda v: v.reshape(-1, 1, g, g).repeat_interleave(p, 2).repeat_interleave(p, 3)
    pixel = (up(w) * (pixels - target) ** 2).mean() / up(mask).mean()
    flat = teacher.reshape(-1, teacher.shape[-1])
    t = (teacher - flat.mean(0)) / (flat.var(0, unbiased=False) + 1e-6).sqrt()
    t = F.layer_norm(t, (t.shape[-1],), eps=LN_EPS)
    f = F.layer_norm(features, (features.shape[-1],), eps=LN_EPS)
    feature = (w[..., None] * (t - f) ** 2).sum() / (mask.sum() * features.shape[-1])
    return pixel + feature


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="vitb16")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", choices=["fp32", "bf16-autocast"], default="bf16-autocast")
    a = ap.parse_args()
    c = PRESETS[a.preset]
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(7)
    student = Student(c).to(dev).train()
    teacher = Encoder(c).to(dev).eval()
    teacher.load_state_dict(student.encoder.state_dict())
    for t in teacher.parameters():
        t.requires_grad_(False)
    decay, no_decay = [], []
    for n, t in student.named_parameters():
        (no_decay if t.dim() <= 1 or n.endswith(".bias") or n.split(".")[-1] in ("cls_token", "pos_embed") else decay).append(t)
    groups = [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}]
    try:
        opt = torch.optim.AdamW(groups, lr=1.5e-4, betas=(0.9, 0.999), fused=cuda)
        fused = cuda
    except (TypeError, RuntimeError):
        opt = torch.optim.AdamW(groups, lr=1.5e-4, betas=(0.9, 0.999))
        fused = False
    n = (c["image"] // c["patch"]) ** 2
    keep = n - (n - int(0.25 * n))  # the engine's K = N − int((1 − 0.75)·N) masked
    pool = torch.rand(4 * a.batch, c["channels"], c["image"], c["image"]) * 2 - 1
    if cuda:
        pool = pool.pin_memory()
    t_params = list(teacher.parameters())
    s_params = list(student.encoder.parameters())
    autocast = a.precision == "bf16-autocast"

    def step(i):
        images = pool[(i % 4) * a.batch:(i % 4 + 1) * a.batch].to(dev, non_blocking=True)
        ids_shuffle = torch.rand(a.batch, n, device=dev).argsort(1)
        ids_restore = ids_shuffle.argsort(1)
        mask = torch.ones(a.batch, n, device=dev)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
            with torch.no_grad():
                target = teacher.full(images)
            pixels, features = student(images, ids_shuffle[:, :keep], ids_shuffle[:, keep:], ids_restore)
            loss = losses(c, pixels, features, target, images, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            if hasattr(torch, "_foreach_lerp_"):
                torch._foreach_lerp_(t_params, s_params, 1 - 0.996)
            else:
                for t, s in zip(t_params, s_params):
                    t.mul_(0.996).add_(s, alpha=1 - 0.996)
        return loss

    times, first, last = [], None, None
    for i in range(a.warmup + a.steps):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = step(i)
        value = loss.item()  # the engine reads its losses at report steps; here every step, as `step` reports each
        if cuda:
            torch.cuda.synchronize()
        if i >= a.warmup:
            times.append((time.perf_counter() - start) * 1000)
        first = value if first is None else first
        last = value
    med = statistics.median(times)
    print(json.dumps(dict(impl="pytorch", mode="bootmae", config="%s %dx%dx%d p%d d%d L%d reg%d dec%d" % (
        a.preset, c["image"], c["image"], c["channels"], c["patch"], c["dim"], c["depth"], c["reg_dim"], c["dec_depth"]),
        precision="bf16 autocast (fp32 masters)" if autocast else "fp32", batch=a.batch, steps=len(times),
        ms_per_step_median=round(med, 1), ms_per_step_min=round(min(times), 1), images_per_s=round(a.batch / (med / 1000), 1),
        loss_first=first, loss_last=last, device=torch.cuda.get_device_name(dev) if cuda else "cpu", torch=torch.__version__,
        sdpa=SDPA is not None, fused_adamw=fused, peak_gpu_mb=round(torch.cuda.max_memory_allocated(dev) / 2**20) if cuda else 0)))
    if not math.isfinite(last):
        raise SystemExit("loss is not finite")


if __name__ == "__main__":
    main()
