#!/usr/bin/python3
"""Writes the PyTorch-interop fixtures, so the C# import can be checked against PyTorch itself:
- a tiny MAE/timm-style ViT encoder saved with torch.save (.pth, with a fused qkv bias whose key part is non-zero) and
  the tokens PyTorch computes for a few images, with BootMAE's 0.5/0.5 and with the ImageNet normalisation;
- an official-layout BootMAE training checkpoint: 'model' (student, DDP 'module.' prefixes), 'model_ema' (teacher),
  a real AdamW 'optimizer' state dict, 'scaler', an int 'epoch' and 'args' as an argparse.Namespace;
- a Hugging Face ViTMAEForPreTraining state dict (pytorch_model.bin names: vit.embeddings..., separate query/key/value
  with a non-zero key bias, decoder keys) and the tokens of the Hugging Face forward (LayerNorm eps 1e-12);
- the position table resampled bicubically (align_corners=False, antialiased when shrinking, as timm does).
Run with Debian's python3-torch: /usr/bin/python3 tools/make_interop_fixtures.py
"""
import argparse
import collections
import os

import torch
import torch.nn.functional as F

from safetensors_writer import save_safetensors

OUT = os.path.join(os.path.dirname(__file__), "..", "test", "Microsoft.ML.BootMae.Tests", "TestData", "interop")
IMAGE, PATCH, CHANNELS, DIM, DEPTH, HEADS = 16, 4, 3, 32, 2, 2


def layer_norm(x, w, b):
    return F.layer_norm(x, (x.shape[-1],), w, b, eps=1e-6)


IMAGENET_MEAN, IMAGENET_STD = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])


def imagenet(images01):
    return (images01 - IMAGENET_MEAN.view(1, 3, 1, 1)) / IMAGENET_STD.view(1, 3, 1, 1)


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
        tokens_imagenet = encoder_tokens(sd, imagenet(images01))
    os.makedirs(OUT, exist_ok=True)
    torch.save(collections.OrderedDict(sd), os.path.join(OUT, "mae_style_encoder.pth"))
    save_safetensors(os.path.join(OUT, "mae_style_encoder.safetensors"), sd)
    save_safetensors(os.path.join(OUT, "mae_style_expected.safetensors"), {"images01": images01, "tokens": tokens, "tokens_imagenet": tokens_imagenet})
    official_checkpoint(sd, images01, g)
    hugging_face(sd, images01)
    position_tables(sd["pos_embed"])
    print("wrote", OUT, "torch", torch.__version__)


def bootmae_style(sd, shift):
    """The encoder under BootMAE's names (q_bias, v_bias; no key bias), weights moved by `shift` to tell copies apart."""
    out = collections.OrderedDict()
    for k, v in sd.items():
        if k.startswith("decoder") or k == "mask_token":
            continue
        if k.endswith("attn.qkv.bias"):
            out[k.replace("qkv.bias", "q_bias")] = (v[:DIM] + shift).clone()
            out[k.replace("qkv.bias", "v_bias")] = (v[2 * DIM:] + shift).clone()
        elif k == "pos_embed":
            out[k] = v.clone()  # fixed sin-cos in BootMAE: never trained, the same in student and teacher
        else:
            out[k] = (v + shift).clone()
    return out


def as_fused(sd):
    """BootMAE names -> a fused qkv bias with a zero key part, for encoder_tokens."""
    out = dict(sd)
    for i in range(DEPTH):
        p = f"blocks.{i}.attn."
        q, v = out.pop(p + "q_bias"), out.pop(p + "v_bias")
        out[p + "qkv.bias"] = torch.cat([q, torch.zeros_like(q), v])
    return out


class ExecutesOnLoad:
    """pickle.load would call os.system(...) to rebuild this object; a data-only reader must not."""

    def __reduce__(self):
        return (os.system, ("echo executed > /tmp/bootmae-interop-pickle-executed",))


def official_checkpoint(sd, images01, g):
    """torch.save of the dict run_pretraining.py's utils.save_model writes: student, EMA teacher, optimizer, scaler, epoch, args."""
    student, teacher = bootmae_style(sd, 0.0), bootmae_style(sd, 0.05)
    # The optimizer state of a real AdamW step over the student's tensors (moments, step counts, param groups).
    params = [torch.nn.Parameter(v.clone()) for v in student.values()]
    optimizer = torch.optim.AdamW(params, lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05)
    sum((p * torch.randn(p.shape, generator=g)).sum() for p in params).backward()
    optimizer.step()
    args = argparse.Namespace(model="pretrain_bootmae_tiny_patch4_16", batch_size=3, epochs=800, input_size=IMAGE, mask_ratio=0.75,
                              lr=1.5e-4, opt_betas=[0.9, 0.95], model_ema=True, model_ema_decay=0.999, output_dir="", resume="",
                              device="cuda", seed=0, dist_url="env://", clip_grad=None, imagenet_default_mean_and_std=False)
    checkpoint = {
        "model": collections.OrderedDict(("module." + k, v) for k, v in student.items()),  # saved from DDP without unwrapping
        "model_ema": teacher,
        "optimizer": optimizer.state_dict(),
        "epoch": 7,
        "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000, "_growth_tracker": 11},
        "args": args,
    }
    torch.save(checkpoint, os.path.join(OUT, "official_checkpoint.pth"))
    # A pickle that would run a shell command if unpickled by Python's pickle: the import must only read it as data.
    torch.save({"model": student, "payload": ExecutesOnLoad()}, os.path.join(OUT, "code_execution_checkpoint.pth"))
    # A run with --imagenet_default_mean_and_std: its args tell the import to use the ImageNet mean/std.
    torch.save({"model": student, "epoch": 1, "args": argparse.Namespace(**{**vars(args), "imagenet_default_mean_and_std": True})},
               os.path.join(OUT, "official_imagenet_args_checkpoint.pth"))
    # A checkpoint without weights (e.g. an optimizer-only save): the import must say what the file holds.
    torch.save({"optimizer": {"state": {}, "param_groups": [{"lr": 1.5e-4, "params": [0, 1]}]}, "epoch": 7, "args": args},
               os.path.join(OUT, "no_weights_checkpoint.pth"))
    with torch.no_grad():
        expected = {
            "student_tokens": encoder_tokens(as_fused(student), images01 * 2 - 1),
            "teacher_tokens": encoder_tokens(as_fused(teacher), images01 * 2 - 1),
        }
    save_safetensors(os.path.join(OUT, "official_expected.safetensors"), expected)


def hf_layer_norm(x, w, b, eps=1e-12):
    return F.layer_norm(x, (x.shape[-1],), w, b, eps=eps)  # ViTMAEConfig.layer_norm_eps = 1e-12


def hugging_face(sd, images01):
    """ViTMAEForPreTraining's state dict names (transformers modeling_vit_mae.py) and its forward without masking."""
    hf = collections.OrderedDict()
    hf["vit.embeddings.cls_token"] = sd["cls_token"].clone()
    hf["vit.embeddings.position_embeddings"] = sd["pos_embed"].clone()
    hf["vit.embeddings.patch_embeddings.projection.weight"] = sd["patch_embed.proj.weight"].clone()
    hf["vit.embeddings.patch_embeddings.projection.bias"] = sd["patch_embed.proj.bias"].clone()
    for i in range(DEPTH):
        p, h = f"blocks.{i}.", f"vit.encoder.layer.{i}."
        w, b = sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"]
        for j, name in enumerate(["query", "key", "value"]):
            hf[h + f"attention.attention.{name}.weight"] = w[j * DIM:(j + 1) * DIM].clone()
            hf[h + f"attention.attention.{name}.bias"] = b[j * DIM:(j + 1) * DIM].clone()  # the key bias is non-zero
        hf[h + "attention.output.dense.weight"] = sd[p + "attn.proj.weight"].clone()
        hf[h + "attention.output.dense.bias"] = sd[p + "attn.proj.bias"].clone()
        hf[h + "layernorm_before.weight"] = sd[p + "norm1.weight"].clone()
        hf[h + "layernorm_before.bias"] = sd[p + "norm1.bias"].clone()
        hf[h + "layernorm_after.weight"] = sd[p + "norm2.weight"].clone()
        hf[h + "layernorm_after.bias"] = sd[p + "norm2.bias"].clone()
        hf[h + "intermediate.dense.weight"] = sd[p + "mlp.fc1.weight"].clone()
        hf[h + "intermediate.dense.bias"] = sd[p + "mlp.fc1.bias"].clone()
        hf[h + "output.dense.weight"] = sd[p + "mlp.fc2.weight"].clone()
        hf[h + "output.dense.bias"] = sd[p + "mlp.fc2.bias"].clone()
    hf["vit.layernorm.weight"] = sd["norm.weight"].clone()
    hf["vit.layernorm.bias"] = sd["norm.bias"].clone()
    # ViTMAEForPreTraining's decoder: ignored by the import, and the sign that these are MAE weights (ImageNet mean/std).
    hf["decoder.decoder_embed.weight"] = sd["decoder_embed.weight"].clone()
    hf["decoder.mask_token"] = sd["mask_token"].clone()
    hf["decoder.decoder_pos_embed"] = torch.zeros(1, (IMAGE // PATCH) ** 2 + 1, 16)
    torch.save(hf, os.path.join(OUT, "hf_vitmae_pytorch_model.bin"))

    save_safetensors(os.path.join(OUT, "hf_vitmae_expected.safetensors"),
                     {"tokens": hf_forward(hf, images01, 1e-12), "tokens_eps_1e-6": hf_forward(hf, images01, 1e-6)})


def hf_forward(hf, images01, eps):
    """ViTMAEModel's forward (no masking) on ImageNet-normalised pixels; eps 1e-12 as Hugging Face, 1e-6 as this package."""
    with torch.no_grad():
        x = imagenet(images01)
        x = F.conv2d(x, hf["vit.embeddings.patch_embeddings.projection.weight"], hf["vit.embeddings.patch_embeddings.projection.bias"], stride=PATCH)
        pos = hf["vit.embeddings.position_embeddings"]
        x = x.flatten(2).transpose(1, 2) + pos[:, 1:]
        x = torch.cat([(hf["vit.embeddings.cls_token"] + pos[:, :1]).expand(x.shape[0], -1, -1), x], 1)
        hd = DIM // HEADS
        for i in range(DEPTH):
            h = f"vit.encoder.layer.{i}."
            y = hf_layer_norm(x, hf[h + "layernorm_before.weight"], hf[h + "layernorm_before.bias"], eps)
            B, T, _ = y.shape
            q, k, v = (F.linear(y, hf[h + f"attention.attention.{n}.weight"], hf[h + f"attention.attention.{n}.bias"]).view(B, T, HEADS, hd).transpose(1, 2)
                       for n in ["query", "key", "value"])
            a = torch.softmax((q @ k.transpose(-1, -2)) * hd ** -0.5, dim=-1)
            y = (a @ v).transpose(1, 2).reshape(B, T, DIM)
            x = x + F.linear(y, hf[h + "attention.output.dense.weight"], hf[h + "attention.output.dense.bias"])
            y = hf_layer_norm(x, hf[h + "layernorm_after.weight"], hf[h + "layernorm_after.bias"], eps)
            y = F.gelu(F.linear(y, hf[h + "intermediate.dense.weight"], hf[h + "intermediate.dense.bias"]))
            x = x + F.linear(y, hf[h + "output.dense.weight"], hf[h + "output.dense.bias"])
        return hf_layer_norm(x, hf["vit.layernorm.weight"], hf["vit.layernorm.bias"], eps)


def resample(pos, new_grid):
    """timm's resample_abs_pos_embed for one cls row: bicubic on the grid, align_corners=False, antialias when shrinking."""
    grid = int(round((pos.shape[1] - 1) ** 0.5))
    table = pos[:, 1:].reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
    table = F.interpolate(table, size=(new_grid, new_grid), mode="bicubic", align_corners=False, antialias=new_grid < grid)
    return torch.cat([pos[:, :1], table.permute(0, 2, 3, 1).reshape(1, new_grid * new_grid, -1)], 1)


def position_tables(pos):
    with torch.no_grad():
        tables = {"pos_embed": pos, "grid6": resample(pos, 6), "grid3": resample(pos, 3), "grid8": resample(pos, 8)}
    save_safetensors(os.path.join(OUT, "pos_resampled.safetensors"), tables)


if __name__ == "__main__":
    main()
