#!/usr/bin/python3
"""Writes the trajectory-parity fixture: 200 pretraining steps of the parity fixture's tiny BootMAE in PyTorch.

One-step parity (make_parity_fixtures.py) cannot see a schedule bug; this can. From one set of initial weights, a
fixed data order (25 epochs over a pool of 32 images, batch 4) and explicit per-step masks, two runs go through the
whole loop: lr(step) into AdamW (β 0.9/0.95, eps 1e-8, the engine's two weight-decay groups), L = L_R + λ(step)·L_P,
then the EMA teacher update with m(step). The schedules are the engine's (BootMaePretrainer.CreateSchedules +
Schedules), written out here from their stated semantics:
  lr: peak = LearningRate·B/256; linear warmup from 0 reaching the peak at the last warmup step, then a half cosine
      reaching min = peak·MinLearningRateFraction exactly at the last step.
  λ:  λ·min(1, (step+1)/R), R = max(1, round(FeatureLossRampFraction·T)), per step.
  m:  start → mid over round(EmaRamp1Fraction·T) steps, → end by round(EmaRamp2EndFraction·T), then constant; each of
      start/mid/end is max(floor, a horizon-scaled value 1 − 1/τ, τ = T/250, T/25, T/2.5, clamped to [0.5, 0.99999]),
      and kept non-decreasing.
Run "layernorm": the official LN feature target; run "batchstd": per-channel batch standardisation, then LN.
Augmentation off, fp32 teacher, pixel eps 1e-5, weighted mask.

Outputs (test/Microsoft.ML.BootMae.Tests/TestData/parity/): trajectory.safetensors (pool, order, masks, tables,
initial weights, final student and teacher of each run) and trajectory.json (settings, per-step losses and schedule
values). Run: /usr/bin/python3 tools/make_trajectory_fixture.py
"""
import json
import math
import os

import torch
import torch.nn.functional as F

import make_parity_fixtures as ref

BATCH, POOL, EPOCHS = 4, 32, 25
STEPS_PER_EPOCH = POOL // BATCH
TOTAL = STEPS_PER_EPOCH * EPOCHS  # 200

# Engine settings (BootMaePretrainerSettings field names) shared by both runs; the C# test sets the same values.
COMMON = dict(BatchSize=BATCH, MaxEpochs=EPOCHS, LearningRate=0.128, MinLearningRateFraction=0.05, WarmupFraction=0.05,
              WeightDecay=0.05, FeatureLossWeight=1.0, FeatureLossRampFraction=0.25, EmaRamp1Fraction=0.125,
              EmaRamp2EndFraction=0.5, PixelTargetEpsilon=1e-5, WeightMask=True, MaskRatio=0.75, Augment=False)
# The floors differ so that one run clamps start and mid (0.9, 0.9, 0.9875) and the other ramps through all three.
RUNS = {"layernorm": dict(FeatureTargetNormalization="LayerNorm", EmaMomentumFloor=0.9),
        "batchstd": dict(FeatureTargetNormalization="BatchStandardized", EmaMomentumFloor=0.6)}


# ---- schedules ----

def steps_of(fraction, total):
    return int(round(min(max(fraction, 0.0), 1.0) * total))  # round half to even, as .NET Math.Round


def make_schedules(total, s):
    peak = s["LearningRate"] * s["BatchSize"] / 256.0
    low = min(peak * s["MinLearningRateFraction"], peak)
    warm = steps_of(s["WarmupFraction"], total)
    ramp = max(1, steps_of(s["FeatureLossRampFraction"], total))

    def horizon(tau):
        return min(max(1.0 - 1.0 / max(tau, 1e-9), 0.5), 0.99999)

    floor = s["EmaMomentumFloor"]
    start = max(floor, horizon(total / 250.0))
    mid = max(start, max(floor, horizon(total / 25.0)))
    end = max(mid, max(floor, horizon(total / 2.5)))
    r1 = steps_of(s["EmaRamp1Fraction"], total)
    r2 = max(r1, steps_of(s["EmaRamp2EndFraction"], total))

    def lr(step):
        if step < warm:
            return peak if warm == 1 else peak * step / (warm - 1)
        n = total - warm
        if n <= 1:
            return peak if warm == 0 else low
        progress = (step - warm) / (n - 1)
        return low + 0.5 * (peak - low) * (1 + math.cos(math.pi * progress))

    def lam(step):
        return s["FeatureLossWeight"] * min(1.0, (step + 1) / ramp)

    def momentum(step):
        if step < r1:
            return start + (mid - start) * step / r1
        if step < r2:
            return mid + (end - mid) * (step - r1) / (r2 - r1)
        return end

    return lr, lam, momentum


# ---- feature target ----

def feature_loss(pred, teacher, mask, w, batch_standardized):
    if batch_standardized:
        mean = teacher.mean(dim=(0, 1), keepdim=True)
        var = teacher.var(dim=(0, 1), unbiased=False, keepdim=True)
        teacher = (teacher - mean) / torch.sqrt(var + 1e-6)
    return ref.feature_loss(pred, teacher, mask, w)


def make_masks(gen):
    # Random per-sample shuffles (visible first): the engine's masks are injected, so any valid masks do.
    return torch.stack([torch.stack([torch.randperm(ref.N, generator=gen) for _ in range(BATCH)]) for _ in range(TOTAL)])


def run(name, settings, initial, pool, order, shuffles, pos, de_pos):
    s = dict(COMMON, **settings)
    lr_of, lam_of, m_of = make_schedules(TOTAL, s)
    bs = s["FeatureTargetNormalization"] == "BatchStandardized"
    keep = ref.CFG["num_keep"]  # int(N·(1 − MaskRatio)) = 4 of 16
    P = {k: v.clone().requires_grad_(True) for k, v in initial.items()}
    T = {k: v.clone() for k, v in initial.items() if k in ref.encoder_shapes()}
    decay = [t for n, t in P.items() if not ref.no_decay(n, t)]
    nod = [t for n, t in P.items() if ref.no_decay(n, t)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": s["WeightDecay"]}, {"params": nod, "weight_decay": 0.0}],
                            lr=lr_of(0), betas=(0.9, 0.95), eps=1e-8)
    trace = {k: [] for k in ("total", "pixel", "feature", "lr", "lambda", "momentum")}
    for step in range(TOTAL):
        lr, lam, m = lr_of(step), lam_of(step), m_of(step)
        for group in opt.param_groups:
            group["lr"] = lr
        images = pool[order[step]] * 2 - 1
        ids_shuffle = shuffles[step]
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        mask = torch.ones(BATCH, ref.N)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        with torch.no_grad():
            teacher = ref.encoder_full(images, T, pos)
        _, _, _, pixels, features = ref.bootmae_forward(images, P, pos, de_pos, ids_shuffle, ids_restore)
        w = ref.weight_mask(mask)
        lp_pix = ref.pixel_loss(pixels, images, mask, w)
        lp_feat = feature_loss(features, teacher, mask, w, bs)
        total = lp_pix + lam * lp_feat
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        with torch.no_grad():
            for k in T:
                T[k] = m * T[k] + (1 - m) * P[k].detach()
        for key, value in (("total", total.item()), ("pixel", lp_pix.item()), ("feature", lp_feat.item()),
                           ("lr", lr), ("lambda", lam), ("momentum", m)):
            trace[key].append(value)
        if step % 50 == 0 or step == TOTAL - 1:
            print("%s step %3d  L %.6f  L_R %.6f  L_P %.6f  lr %.3e  lambda %.3f  m %.5f"
                  % (name, step, total.item(), lp_pix.item(), lp_feat.item(), lr, lam, m))
    tensors = {"%s.student.%s" % (name, k): v.detach() for k, v in P.items()}
    tensors.update({"%s.teacher.%s" % (name, k): v for k, v in T.items()})
    return s, trace, tensors


def main():
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(20240917)
    pool = torch.rand(POOL, ref.CFG["channels"], ref.CFG["image"], ref.CFG["image"], generator=gen)
    order = torch.stack([torch.randperm(POOL, generator=gen) for _ in range(EPOCHS)]).reshape(TOTAL, BATCH)
    shuffles = make_masks(gen)
    pos = ref.sincos_table(ref.GRID, ref.CFG["dim"])
    de_pos = ref.sincos_table(ref.GRID, ref.CFG["reg_dim"])
    initial = {k: v.detach() for k, v in ref.make_weights(ref.bootmae_shapes(), gen).items()}

    out = {"in.pool": pool, "in.order": order, "in.ids_shuffle": shuffles, "table.pos_embed": pos,
           "table.de_pos_embed": de_pos}
    out.update({"w." + k: v for k, v in initial.items()})
    doc = {"config": ref.CFG, "batch": BATCH, "pool": POOL, "epochs": EPOCHS, "total_steps": TOTAL,
           "torch_version": torch.__version__, "runs": {}}
    for name, settings in RUNS.items():
        s, trace, tensors = run(name, settings, initial, pool, order, shuffles, pos, de_pos)
        out.update(tensors)
        doc["runs"][name] = {"settings": s, "trace": trace}
    ref.write_safetensors(os.path.join(ref.OUT, "trajectory.safetensors"), out)
    with open(os.path.join(ref.OUT, "trajectory.json"), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
