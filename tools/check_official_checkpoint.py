#!/usr/bin/python3
"""Checks checkpoint-level interop with the official BootMAE code (LightDXY/BootMAE, run_pretraining.py).

  check EXPORT.pth EXPECTED.safetensors [--official-checkout DIR]
      EXPORT.pth was written by Microsoft.ML.BootMae (BootMaeOfficialCheckpoint.Export). Builds the official pretraining
      model class from the configuration recorded in the file, loads 'model' and 'model_ema' with strict=True (the EMA as
      timm's ModelEma does on --resume), loads 'optimizer' into the AdamW that the official create_adamw_optimizer builds,
      runs one forward on the images and masks in EXPECTED and compares pixel prediction, feature prediction and teacher
      target with the C# outputs stored there (|a - e| <= 1e-4 + 1e-4 |e|). Also checks that EXPORT.safetensors holds
      the same tensors. Exit status 0 when everything holds.

  write OUT.pth EXPECTED.safetensors --config JSON
      Writes a checkpoint exactly as the official utils.save_model does (torch.save of model, optimizer after two real
      AdamW steps, epoch, scaler, an argparse.Namespace as args, model_ema), plus fixed inputs and this model's outputs,
      so the C# import can be checked against a file PyTorch itself wrote.

The model definition below is this repository's own equivalent of the official VisionTransformerForMaskedImageModeling
(models/modeling_pretrain_bootmae.py): same module and parameter names, registration order and shapes, written without
CUDA calls. With --official-checkout the official module file is imported from that checkout instead (it needs timm).
Run with Debian's python3-torch: /usr/bin/python3 tools/check_official_checkpoint.py ...
"""
import argparse
import copy
import importlib.util
import json
import os
import pickle
import pickletools
import struct
import sys
import zipfile

import torch
import torch.nn as nn
import torch.nn.functional as F

from safetensors_writer import save_safetensors

ATOL = RTOL = 1e-4


# ---------------------------------------------------------------------------------------------------------------------
# Minimal safetensors I/O (F32 and I64), so the check needs nothing beyond torch.

def load_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, end = e["data_offsets"]
        dtype = {"F32": torch.float32, "I64": torch.int64}[e["dtype"]]
        t = torch.frombuffer(bytearray(data[b:end]), dtype=dtype) if end > b else torch.empty(0, dtype=dtype)
        out[name] = t.reshape(e["shape"]).clone()
    return out




# ---------------------------------------------------------------------------------------------------------------------
# The official pretraining model, re-written: names, order and shapes as in VisionTransformerForMaskedImageModeling.

class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def _attend(q, k, v, scale):
    a = ((q * scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    return a @ v


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.num_heads = heads
        head_dim = dim // heads
        inner = head_dim * heads
        self.scale = head_dim ** -0.5
        self.qkv = nn.Linear(dim, inner * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(inner))
        self.v_bias = nn.Parameter(torch.zeros(inner))
        self.proj = nn.Linear(inner, dim)

    def forward(self, x):
        B, N, _ = x.shape
        bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias).reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        o = _attend(qkv[0], qkv[1], qkv[2], self.scale)
        return self.proj(o.transpose(1, 2).reshape(B, N, -1))


class CrossAttention(nn.Module):
    def __init__(self, dim, c_dim, heads):
        super().__init__()
        self.num_heads = heads
        head_dim = dim // heads
        inner = head_dim * heads
        self.scale = head_dim ** -0.5
        self.q = nn.Linear(dim, inner, bias=False)
        self.kv = nn.Linear(c_dim, inner * 2, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(inner))
        self.v_bias = nn.Parameter(torch.zeros(inner))
        self.proj = nn.Linear(inner, dim)

    def forward(self, x, fea):
        B, N, _ = x.shape
        M = fea.shape[1]
        q = F.linear(x, self.q.weight, self.q_bias).reshape(B, N, self.num_heads, -1).permute(0, 2, 1, 3)
        kv_bias = torch.cat((torch.zeros_like(self.v_bias), self.v_bias))
        kv = F.linear(fea, self.kv.weight, kv_bias).reshape(B, M, 2, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        o = _attend(q, kv[0], kv[1], self.scale)
        return self.proj(o.transpose(1, 2).reshape(B, N, -1))


def _ln(dim):
    return nn.LayerNorm(dim, eps=1e-6)


class Block(nn.Module):
    def __init__(self, dim, heads, mlp_ratio):
        super().__init__()
        self.norm1 = _ln(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = _ln(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class DecodeBlock(nn.Module):
    def __init__(self, dim, c_dim, heads, mlp_ratio):
        super().__init__()
        self.norm1 = _ln(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = _ln(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm3 = _ln(dim)
        self.norm4 = _ln(c_dim)
        self.c_attn = CrossAttention(dim, c_dim, heads)

    def forward(self, x, fea):
        x = x + self.attn(self.norm1(x))
        x = x + self.c_attn(self.norm3(x), self.norm4(fea))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, img_size, patch_size, in_chans, embed_dim):
        super().__init__()
        self.patch_size = (patch_size, patch_size)
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class PatchDeEmbed(nn.Module):
    def __init__(self, img_size, patch_size, in_chans, embed_dim):
        super().__init__()
        self.grid = img_size // patch_size
        self.proj = nn.ConvTranspose2d(embed_dim, in_chans, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        B, N, C = x.shape
        return self.proj(x.transpose(-2, -1).reshape(B, C, self.grid, self.grid))


def sincos(grid, dim):
    g = torch.arange(grid, dtype=torch.float32)
    gw, gh = torch.meshgrid(g, g, indexing="ij")
    q = dim // 4
    omega = 1.0 / (10000.0 ** (torch.arange(q, dtype=torch.float32) / q))
    ow = torch.einsum("m,d->md", gw.flatten(), omega)
    oh = torch.einsum("m,d->md", gh.flatten(), omega)
    pe = torch.cat([torch.sin(ow), torch.cos(ow), torch.sin(oh), torch.cos(oh)], dim=1)[None]
    return torch.cat([torch.zeros(1, 1, dim), pe], dim=1)


class VisionTransformerForMaskedImageModeling(nn.Module):
    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768, depth=12, fea_list=(0, 11), num_heads=12,
                 mlp_ratio=4.0, decoder_depth=2, decode_dim=512):
        super().__init__()
        self.embed_dim = embed_dim
        self.decode_dim = decode_dim
        self.fea_list = list(fea_list)
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        grid = img_size // patch_size
        self.pos_embed = nn.Parameter(sincos(grid, embed_dim), requires_grad=False)
        self.de_pos_embed = nn.Parameter(sincos(grid, decode_dim), requires_grad=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = _ln(embed_dim)
        self.decode_blocks = nn.ModuleList([DecodeBlock(decode_dim, embed_dim, num_heads, mlp_ratio) for _ in range(decoder_depth)])
        self.decode_norm = _ln(decode_dim)
        self.down = nn.Linear(embed_dim, decode_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decode_dim))
        self.lm_head = PatchDeEmbed(img_size, patch_size, in_chans, decode_dim)
        self.decode_blocks_1 = nn.ModuleList([DecodeBlock(embed_dim, embed_dim, num_heads, mlp_ratio) for _ in range(decoder_depth)])
        self.down_1 = nn.Linear(embed_dim, embed_dim)
        self.mask_token_1 = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.decode_norm_1 = _ln(embed_dim)
        self.lm_head_1 = nn.Linear(embed_dim, embed_dim)

    def no_weight_decay(self):
        return {"pos_embed", "cls_token"}

    def get_feature(self, x, mask_len, idx_shuffle):
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return x[:, 1:]

    def forward(self, x, mask_len, idx_shuffle):
        x = self.patch_embed(x)
        B, N, _ = x.shape
        idx_shuffle = torch.cat([torch.zeros(B, 1, dtype=torch.long), idx_shuffle + 1], dim=1)
        idx_unshuffle = torch.argsort(idx_shuffle, dim=1)
        x = torch.cat((self.cls_token.expand(B, -1, -1), x), dim=1) + self.pos_embed
        keep = N - mask_len
        idx_sh, idx_mask_sh = idx_shuffle[:, :1 + keep], idx_shuffle[:, 1 + keep:]
        x = torch.gather(x, 1, idx_sh.unsqueeze(-1).repeat(1, 1, self.embed_dim))
        feas = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i in self.fea_list:
                feas.append(x)
        x = self.norm(x)
        if len(feas) == 1:
            feas.append(feas[0])

        def decode(down, token, table, blocks, norm, head, fea, dim):
            pe = torch.gather(table.repeat(B, 1, 1), 1, idx_mask_sh.unsqueeze(-1).repeat(1, 1, dim))
            y = torch.cat([down(x), token.expand(B, mask_len, -1) + pe], dim=1)
            y = torch.gather(y, 1, idx_unshuffle.unsqueeze(-1).repeat(1, 1, dim))
            for blk in blocks:
                y = blk(y, fea)
            return head(norm(y)[:, 1:])

        x0 = decode(self.down, self.mask_token, self.de_pos_embed, self.decode_blocks, self.decode_norm, self.lm_head, feas[0], self.decode_dim)
        x1 = decode(self.down_1, self.mask_token_1, self.pos_embed, self.decode_blocks_1, self.decode_norm_1, self.lm_head_1, feas[1], self.embed_dim)
        return x0, x1


def get_parameter_groups(model, weight_decay, skip_list):
    """The official optim_factory.get_parameter_groups (no layer decay): groups in order of first appearance."""
    groups = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = len(param.shape) == 1 or name.endswith(".bias") or name in skip_list
        key = "no_decay" if no_decay else "decay"
        groups.setdefault(key, {"weight_decay": 0.0 if no_decay else weight_decay, "params": [], "lr_scale": 1.0})
        groups[key]["params"].append(param)
    return list(groups.values())


def create_adamw(model, lr, weight_decay):
    """The official optim_factory.create_adamw_optimizer."""
    return torch.optim.AdamW(get_parameter_groups(model, weight_decay, model.no_weight_decay()), lr=lr, betas=(0.9, 0.95),
                             weight_decay=weight_decay)


def model_class(checkout):
    if checkout is None:
        return VisionTransformerForMaskedImageModeling
    path = os.path.join(checkout, "models", "modeling_pretrain_bootmae.py")
    spec = importlib.util.spec_from_file_location("modeling_pretrain_bootmae", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # needs timm, as the official code does
    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *a, **k: self  # its forward calls .cuda() on an index tensor
    return module.VisionTransformerForMaskedImageModeling


def build(cfg, checkout=None):
    kwargs = dict(img_size=cfg["img_size"], patch_size=cfg["patch_size"], in_chans=cfg["in_chans"], embed_dim=cfg["embed_dim"],
                  depth=cfg["depth"], fea_list=list(cfg["fea_list"]), num_heads=cfg["num_heads"], mlp_ratio=cfg["mlp_ratio"],
                  decoder_depth=cfg["decoder_depth"], decode_dim=cfg["decode_dim"])
    if checkout is not None:
        kwargs.update(qkv_bias=True, norm_layer=lambda d: nn.LayerNorm(d, eps=1e-6))
    return model_class(checkout)(**kwargs)


def close(name, actual, expected, failures):
    diff = (actual - expected).abs()
    bound = ATOL + RTOL * expected.abs()
    worst = float(diff.max())
    ok = actual.shape == expected.shape and bool((diff <= bound).all())
    print(f"  {name}: shape {tuple(actual.shape)}, max |diff| {worst:.3e} {'ok' if ok else 'FAILED'}")
    if not ok:
        failures.append(f"{name} differs by up to {worst:.3e} (tolerance {ATOL} + {RTOL}|e|)")


SAFE_GLOBALS = {("torch._utils", "_rebuild_tensor_v2"), ("collections", "OrderedDict")} | {
    ("torch", name) for name in ("FloatStorage", "LongStorage", "DoubleStorage", "HalfStorage", "BFloat16Storage", "IntStorage")}


def pickle_globals(path):
    """The (module, name) pairs the checkpoint's pickle refers to, read as opcodes without unpickling anything."""
    with zipfile.ZipFile(path) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    found, strings = set(), []
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        elif op.name == "GLOBAL":
            found.add(tuple(arg.split(" ", 1)))
        elif op.name == "STACK_GLOBAL":
            found.add((strings[-2], strings[-1]))
    return found


def load_checkpoint(path, failures):
    unsafe = pickle_globals(path) - SAFE_GLOBALS
    if unsafe:
        failures.append(f"the pickle refers to {sorted(unsafe)}, beyond tensors and OrderedDict")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except TypeError:  # torch < 1.13 has no weights_only
        pass
    except pickle.UnpicklingError as e:
        # torch 1.13's weights-only unpickler lacks the BINFLOAT opcode that any float (an optimizer's lr) needs; the
        # opcode scan above has already shown the file names nothing but tensors and OrderedDict.
        print(f"  torch {torch.__version__} weights_only=True refused the file ({str(e).split('WeightsUnpickler error: ')[-1].strip()}); "
              "loaded after the opcode scan instead")
    return torch.load(path, map_location="cpu")


def check(args):
    failures = []
    ckpt = load_checkpoint(args.export, failures)
    expected = load_safetensors(args.expected)
    for key in ("model", "model_ema", "optimizer", "epoch", "args"):
        if key not in ckpt:
            print(f"FAILED: the checkpoint has no '{key}' (keys: {sorted(ckpt)})")
            return 1
    cfg = ckpt["args"]["bootmae"]
    print(f"torch {torch.__version__}; configuration {json.dumps(cfg, sort_keys=True)}; epoch {ckpt['epoch']}")
    model = build(cfg, args.official_checkout)
    print("  model:", model.load_state_dict(ckpt["model"], strict=True))
    # run_pretraining.py --resume: utils._load_checkpoint_for_ema hands ckpt['model_ema'] to timm's ModelEma, whose
    # _load_checkpoint calls ema.load_state_dict (strict) on a deep copy of the model.
    ema = copy.deepcopy(model)
    print("  model_ema:", ema.load_state_dict(ckpt["model_ema"], strict=True))
    ema.eval()
    if int(ckpt["epoch"]) != int(expected["epoch"]):
        failures.append(f"epoch {ckpt['epoch']}, expected {int(expected['epoch'])}")

    # The optimizer the official script builds, then its --resume load.
    wd = float(ckpt["args"]["weight_decay"])
    optimizer = create_adamw(model, lr=1e-3, weight_decay=wd)
    optimizer.load_state_dict(ckpt["optimizer"])
    if any("lr_scale" not in g for g in optimizer.param_groups):
        failures.append("a param group has no 'lr_scale' (train_one_epoch reads it)")
    checked = 0
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        state = optimizer.state.get(p, {})
        want_step = int(expected["optimizer.step." + name])
        if want_step == 0:
            if state:
                failures.append(f"optimizer state for {name}, which never took a step")
            continue
        step = state.get("step")
        step = int(step.item() if torch.is_tensor(step) else step)
        if step != want_step or not torch.equal(state["exp_avg"], expected["optimizer.exp_avg." + name]) \
                or not torch.equal(state["exp_avg_sq"], expected["optimizer.exp_avg_sq." + name]):
            failures.append(f"optimizer state of {name} is not the exported one (step {step}, expected {want_step})")
        checked += 1
    print(f"  optimizer: {len(optimizer.param_groups)} groups, state of {checked} parameters matches by name")

    # One forward on the fixed images and masks.
    images, idx_shuffle, mask_len = expected["images"], expected["idx_shuffle"], int(expected["mask_len"])
    with torch.no_grad():
        pixels, features = model(images, mask_len, idx_shuffle)
        teacher = ema.get_feature(images, mask_len, idx_shuffle)
    close("pixel prediction", pixels, expected["pixels"], failures)
    close("feature prediction", features, expected["features"], failures)
    close("teacher target", teacher, expected["teacher"], failures)

    # The loaded optimizer state must be usable for the official step.
    model.train()
    pixels, features = model(images, mask_len, idx_shuffle)
    (pixels.square().mean() + features.square().mean()).backward()
    optimizer.step()

    # The pickle-free twin holds the same tensors.
    twin_path = os.path.splitext(args.export)[0] + ".safetensors"
    twin = load_safetensors(twin_path)
    for prefix, table in (("model.", ckpt["model"]), ("model_ema.", ckpt["model_ema"])):
        names = {k[len(prefix):] for k in twin if k.startswith(prefix)}
        if names != set(table):
            failures.append(f"{twin_path}: '{prefix}' keys differ from the .pth's ({sorted(names ^ set(table))[:5]})")
        elif not all(torch.equal(twin[prefix + k], v.float()) for k, v in table.items()):
            failures.append(f"{twin_path}: a '{prefix}' tensor differs from the .pth's")
    if int(twin["epoch"]) != int(ckpt["epoch"]):
        failures.append(f"{twin_path}: epoch {int(twin['epoch'])}, the .pth says {ckpt['epoch']}")
    print(f"  {os.path.basename(twin_path)}: {len(twin)} tensors checked against the .pth")

    for f in failures:
        print("FAILED:", f)
    print("OK" if not failures else f"{len(failures)} check(s) failed")
    return 0 if not failures else 1


def write(args):
    cfg = json.loads(args.config)
    torch.manual_seed(0)
    model = build(cfg)
    with torch.no_grad():  # non-trivial values everywhere (LN affine, biases, mask tokens), the sin-cos tables kept
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    ema = copy.deepcopy(model)
    with torch.no_grad():  # an EMA that has drifted from the student
        for p in ema.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.02)
    B, C, S, P = 3, cfg["in_chans"], cfg["img_size"], cfg["patch_size"]
    N = (S // P) ** 2
    mask_len = cfg["mask_len"]
    g = torch.Generator().manual_seed(1)
    images = torch.rand(B, C, S, S, generator=g) * 2 - 1
    idx_shuffle = torch.stack([torch.randperm(N, generator=g) for _ in range(B)])
    optimizer = create_adamw(model, lr=1e-3, weight_decay=cfg["weight_decay"])
    for _ in range(2):
        optimizer.zero_grad()
        x0, x1 = model(images, mask_len, idx_shuffle)
        (x0.square().mean() + x1.square().mean()).backward()
        optimizer.step()
    epoch = cfg["epoch"]
    namespace = argparse.Namespace(model="bootmae_custom", epochs=cfg["epochs"], batch_size=B, mask_num=float(mask_len),
                                   weight_mask=True, feature_weight=1.0, model_ema=True, model_ema_decay=0.999,
                                   window_size=(S // P, S // P), patch_size=(P, P), weight_decay=cfg["weight_decay"])
    checkpoint = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000, "_growth_tracker": 0},
        "args": namespace,
        "model_ema": ema.state_dict(),
    }
    torch.save(checkpoint, args.out)
    model.eval()
    with torch.no_grad():
        pixels, features = model(images, mask_len, idx_shuffle)
        teacher = ema.get_feature(images, mask_len, idx_shuffle)
    out = {"images": images, "idx_shuffle": idx_shuffle, "mask_len": torch.tensor(mask_len), "epoch": torch.tensor(epoch),
           "pixels": pixels, "features": features, "teacher": teacher}
    for name, p in model.named_parameters():
        if p.requires_grad:
            state = optimizer.state[p]
            out["optimizer.exp_avg." + name] = state["exp_avg"]
            out["optimizer.exp_avg_sq." + name] = state["exp_avg_sq"]
            step = state["step"]
            out["optimizer.step." + name] = torch.tensor(int(step.item() if torch.is_tensor(step) else step))
    save_safetensors(args.expected, out)
    print(f"wrote {args.out} and {args.expected} (torch {torch.__version__})")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check")
    c.add_argument("export")
    c.add_argument("expected")
    c.add_argument("--official-checkout", default=None)
    w = sub.add_parser("write")
    w.add_argument("out")
    w.add_argument("expected")
    w.add_argument("--config", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    return check(args) if args.command == "check" else write(args)


if __name__ == "__main__":
    sys.exit(main())
