using Microsoft.ML.BootMae.Modules;
using Microsoft.ML.BootMae.Training;
using Microsoft.VisualStudio.TestTools.UnitTesting;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Tests;

/// <summary>The correctness checks of spec §10 that the model, masking and losses cover (1–11, 13, 14), on a tiny shape.</summary>
[TestClass]
public sealed class InvariantTests
{
    private const int Batch = 3;

    internal static BootMaeArchitecture Tiny { get; } = new()
    {
        ImageSize = 28, PatchSize = 4, Channels = 1, EmbedDim = 32, Depth = 2, Heads = 2, MlpRatio = 4,
        RegressorDim = 32, RegressorHeads = 2, PredictorHeads = 2, DecoderDepth = 2, ShallowBlock = 0, DeepBlock = 1,
    };

    private static Tensor Images(int seed)
    {
        using var g = new Generator((ulong)seed);
        return rand(new long[] { Batch, 1, 28, 28 }, generator: g) * 2 - 1;
    }

    private static MaskBatch Masks(int seed = 1, BootMaeMasking strategy = BootMaeMasking.BlockFill)
        => new MaskingGenerator(Tiny.GridSize, strategy, seed).Next(Batch);

    // §10.1
    [TestMethod]
    public void EncoderSeesOnlyVisibleTokensAndIgnoresMaskedPixels()
    {
        using var scope = NewDisposeScope();
        using var net = BootMaeNetwork.Create(Tiny, OfficialSettings.Create(), 1);
        using var masks = Masks();
        var images = Images(2);
        var pixelMask = BootMaeLosses.ToPixels(masks.Mask, Tiny.GridSize, Tiny.PatchSize);
        var altered = images * (1 - pixelMask) + (Images(3) * pixelMask);
        Assert.IsTrue(altered.ne(images).any().item<bool>(), "the masked pixels really changed");

        var a = net.Forward(images, masks);
        var b = net.Forward(altered, masks);
        CollectionAssert.AreEqual(new long[] { Batch, 1 + Tiny.NumPatches - masks.NumMasked, Tiny.EmbedDim }, a.Encoder.Latent.shape);
        TensorAssert.Equal(a.Encoder.Latent, b.Encoder.Latent, "encoder output");
        TensorAssert.Equal(a.Encoder.Shallow, b.Encoder.Shallow, "shallow feature");
        TensorAssert.Equal(a.Pixels, b.Pixels, "regressor output (its visible-token inputs are unchanged)");
        TensorAssert.Equal(a.Features!, b.Features!, "predictor output");
    }

    // §10.2 is covered in MaskingTests. §10.3
    [TestMethod]
    public void UnshuffleRoundTripPutsTokenIAtSlotIPlusOne()
    {
        using var scope = NewDisposeScope();
        using var masks = Masks(5);
        int n = Tiny.NumPatches;
        // Visible tokens carry their patch index, the cls token carries −1, mask tokens get their index from the table.
        var projected = cat(new[] { full(Batch, 1, 1, -1f), masks.IdsKeep.to(ScalarType.Float32).unsqueeze(-1) }, 1);
        var table = cat(new[] { zeros(1, 1, 1), arange(n, ScalarType.Float32).reshape(1, n, 1) }, 1);
        var seq = DecoderSequence.Assemble(projected, zeros(1, 1, 1), table, masks);
        var expected = cat(new[] { full(Batch, 1, -1f), arange(n, ScalarType.Float32).expand(Batch, n) }, 1);
        TensorAssert.Equal(expected, seq.squeeze(-1), "decoder sequence");
    }

    // §10.4
    [TestMethod]
    public void LossesIgnoreVisiblePositions()
    {
        using var scope = NewDisposeScope();
        using var net = BootMaeNetwork.Create(Tiny, OfficialSettings.Create(), 1);
        using var masks = Masks();
        var images = Images(2);
        var fwd = net.Forward(images, masks);
        var teacher = randn(Batch, Tiny.NumPatches, Tiny.EmbedDim);
        var pixels = fwd.Pixels.detach().requires_grad_(true);
        var features = fwd.Features!.detach().requires_grad_(true);
        var loss = BootMaeLosses.Compute(net, new BootMaeForward(fwd.Encoder, pixels, features), images, masks, teacher, null, 1.0);
        loss.Total.backward();

        var visiblePix = 1 - BootMaeLosses.ToPixels(masks.Mask, Tiny.GridSize, Tiny.PatchSize);
        var visibleTok = (1 - masks.Mask).unsqueeze(-1);
        Assert.AreEqual(0f, (pixels.grad! * visiblePix).abs().sum().item<float>(), "pixel grad at visible positions");
        Assert.AreEqual(0f, (features.grad! * visibleTok).abs().sum().item<float>(), "feature grad at visible positions");
        Assert.IsGreaterThan(0f, pixels.grad!.abs().sum().item<float>(), "pixel grad at masked positions");

        var pixels2 = pixels.detach() + (visiblePix * randn_like(pixels) * 10);
        var features2 = features.detach() + (visibleTok * randn_like(features) * 10);
        var loss2 = BootMaeLosses.Compute(net, new BootMaeForward(fwd.Encoder, pixels2, features2), images, masks, teacher, null, 1.0);
        Assert.AreEqual(loss.Pixel!.item<float>(), loss2.Pixel!.item<float>(), "L_R unchanged");
        Assert.AreEqual(loss.Feature!.item<float>(), loss2.Feature!.item<float>(), "L_P unchanged");
    }

    // §10.5
    [TestMethod]
    public void WeightMaskRangeAndZeroLossWhenExact()
    {
        using var scope = NewDisposeScope();
        using var masks = Masks();
        var w = BootMaeLosses.WeightMask(masks.Mask, Tiny.GridSize, true);
        var masked = masks.Mask.to(ScalarType.Bool);
        Assert.AreEqual(0f, w.masked_select(masked.logical_not()).abs().sum().item<float>(), "visible weight 0");
        var wm = w.masked_select(masked);
        Assert.IsGreaterThanOrEqualTo(10f / 9 - 1e-6f, wm.min().item<float>(), "masked weight ≥ 10/9");
        Assert.IsLessThanOrEqualTo(2f + 1e-6f, wm.max().item<float>(), "masked weight ≤ 2");

        var all = ones(1, Tiny.NumPatches);
        var wAll = BootMaeLosses.WeightMask(all, Tiny.GridSize, true).reshape(Tiny.GridSize, Tiny.GridSize);
        Assert.AreEqual(2f, wAll[3, 3].item<float>(), 1e-6f, "fully masked 3×3 interior");
        Assert.AreEqual(1f + (4f / 9), wAll[0, 0].item<float>(), 1e-6f, "corner sees 4 masked patches");

        var settings = OfficialSettings.Create(s => { s.WeightMask = false; });
        using var net = new BootMaeNetwork(Tiny, settings);
        var images = Images(4);
        var target = BootMaeLosses.PixelTarget(images, Tiny.PatchSize, true);
        var feats = randn(Batch, Tiny.NumPatches, Tiny.EmbedDim);
        var enc = new EncoderOutput(zeros(1), zeros(1), zeros(1));
        var loss = BootMaeLosses.Compute(net, new BootMaeForward(enc, target, feats), images, masks, feats, null, 1.0);
        Assert.AreEqual(0f, loss.Total.item<float>(), 1e-7f, "exact predictions give zero loss");
    }

    // §10.6
    [TestMethod]
    public void NormalisedTargetsHaveZeroMeanUnitVariance()
    {
        using var scope = NewDisposeScope();
        var images = Images(6);
        int p = Tiny.PatchSize, g = Tiny.GridSize;
        var t = BootMaeLosses.PixelTarget(images, p, true).reshape(Batch, 1, g, p, g, p);
        Assert.IsLessThan(1e-5f, t.mean(new long[] { 3, 5 }).abs().max().item<float>(), "patch/channel mean ≈ 0");
        Assert.IsLessThan(1e-3f, (t.var(new long[] { 3, 5 }, unbiased: false) - 1).abs().max().item<float>(), "patch/channel var ≈ 1");

        using var net = BootMaeNetwork.Create(Tiny, OfficialSettings.Create(), 1);
        using var teacher = new MomentumTeacher(net.Encoder);
        var target = teacher.Forward(images);
        CollectionAssert.AreEqual(new long[] { Batch, Tiny.NumPatches, Tiny.EmbedDim }, target.shape, "teacher output B×N×D");
        var ln = BootMaeLosses.FeatureNorm(target);
        Assert.IsLessThan(1e-5f, ln.mean(new long[] { -1 }).abs().max().item<float>(), "LN'd teacher token mean ≈ 0");
        Assert.IsLessThan(1e-3f, (ln.var(-1, unbiased: false) - 1).abs().max().item<float>(), "LN'd teacher token var ≈ 1");
    }

    // §10.7
    [TestMethod]
    public void TeacherGetsNoGradientsAndIsOutsideTheOptimizer()
    {
        using var scope = NewDisposeScope();
        using var net = BootMaeNetwork.Create(Tiny, OfficialSettings.Create(), 1);
        using var teacher = new MomentumTeacher(net.Encoder);
        using var optimizer = ParameterGroups.CreateAdamW(net, 1e-2, 0.05);
        using var masks = Masks();
        var images = Images(2);
        var before = teacher.Encoder.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.clone());

        var fwd = net.Forward(images, masks);
        var loss = BootMaeLosses.Compute(net, fwd, images, masks, teacher.Forward(images), null, 1.0);
        loss.Total.backward();
        optimizer.Step();

        Assert.IsTrue(teacher.Encoder.parameters().All(p => p.grad is null && !p.requires_grad), "teacher has no grads");
        var optimized = optimizer.Parameters.Select(p => p.Handle).ToHashSet();
        Assert.IsFalse(teacher.Encoder.parameters().Any(p => optimized.Contains(p.Handle)), "no teacher parameter in the optimizer");
        foreach (var (key, value) in teacher.Encoder.state_dict())
        {
            TensorAssert.Equal(before[key], value, "teacher unchanged by the step: " + key);
        }
    }

    // §10.8
    [TestMethod]
    public void EmaAlgebra()
    {
        using var scope = NewDisposeScope();
        using var net = BootMaeNetwork.Create(Tiny, OfficialSettings.Create(), 1);
        using var teacher = new MomentumTeacher(net.Encoder);
        var student = net.Encoder.state_dict();
        foreach (var (key, value) in teacher.Encoder.state_dict())
        {
            TensorAssert.Equal(student[key], value, "teacher = student at step 0: " + key);
        }

        using (no_grad())
        {
            foreach (var p in net.Encoder.parameters())
            {
                p.add_(randn_like(p));
            }
        }

        var e0 = teacher.Encoder.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.clone());
        teacher.Update(net.Encoder, 1.0);
        foreach (var (key, value) in teacher.Encoder.state_dict())
        {
            TensorAssert.Equal(e0[key], value, "m = 1 leaves the teacher: " + key);
        }

        teacher.Update(net.Encoder, 0.3);
        foreach (var (key, value) in teacher.Encoder.state_dict())
        {
            TensorAssert.Close((0.3 * e0[key]) + (0.7 * student[key]), value, 1e-6, 1e-6, "m·e + (1−m)·s: " + key);
        }

        teacher.Update(net.Encoder, 0.0);
        foreach (var (key, value) in teacher.Encoder.state_dict())
        {
            TensorAssert.Equal(student[key], value, "m = 0 copies the student: " + key);
        }
    }

    // §10.9
    [TestMethod]
    public void TeacherSeesTheFullImageInEvalModeWithoutFinalNorm()
    {
        using var scope = NewDisposeScope();
        using var net = BootMaeNetwork.Create(Tiny, OfficialSettings.Create(), 1);
        using var teacher = new MomentumTeacher(net.Encoder);
        var images = Images(8);
        Assert.IsFalse(teacher.Encoder.training, "teacher in eval mode");
        var a = teacher.Forward(images);
        var b = teacher.Forward(images);
        TensorAssert.Equal(a, b, "deterministic teacher");

        // Same as the student trunk with every patch visible, taken at the last block before the final LN.
        var all = arange(Tiny.NumPatches, ScalarType.Int64).expand(Batch, -1);
        var student = net.Encoder.ForwardVisible(images, all, 0, Tiny.Depth - 1);
        TensorAssert.Close(student.Deep[.., 1..], a, 1e-5, 1e-5, "teacher = last block output, patch tokens, no LN");
        Assert.IsGreaterThan(1e-3f, (student.Latent[.., 1..] - a).abs().max().item<float>(), "the final LN is not applied");
    }

    // §10.9 with the bf16 compute copy: fp32 master kept, the copy follows it.
    [TestMethod]
    public void BFloat16TeacherTracksItsFloat32Master()
    {
        using var scope = NewDisposeScope();
        using var net = BootMaeNetwork.Create(Tiny, OfficialSettings.Create(), 1);
        using var fp32 = new MomentumTeacher(net.Encoder);
        using var bf16 = new MomentumTeacher(net.Encoder, bfloat16Compute: true);
        var images = Images(8);
        Assert.AreEqual(ScalarType.Float32, bf16.Encoder.parameters().First().dtype, "master stays fp32");
        var a = fp32.Forward(images);
        var b = bf16.Forward(images);
        Assert.AreEqual(ScalarType.Float32, b.dtype);
        Assert.IsLessThan(0.15f, ((a - b).abs().max() / a.abs().max()).item<float>(), "bf16 output close to fp32");

        // Move the student away from the teachers, then copy it in (m = 0): the bfloat16 twin the forwards run on must
        // be the new master rounded to bfloat16, entry by entry, not the weights it was built with.
        using (no_grad())
        {
            foreach (var p in net.Encoder.parameters())
            {
                p.add_(randn_like(p) * 0.05f);
            }
        }

        var twin = bf16.ComputeEncoder!.state_dict();
        var before = twin.ToDictionary(kv => kv.Key, kv => kv.Value.clone());
        bf16.Update(net.Encoder, 0.0);
        fp32.Update(net.Encoder, 0.0);
        TensorAssert.Equal(fp32.Encoder.state_dict()["blocks.0.attn.qkv.weight"], bf16.Encoder.state_dict()["blocks.0.attn.qkv.weight"], "masters agree");
        foreach (var (key, master) in bf16.Encoder.state_dict())
        {
            Assert.AreEqual(ScalarType.BFloat16, twin[key].dtype, key);
            TensorAssert.Equal(master.to(ScalarType.BFloat16), twin[key], "the bf16 twin follows its master after the update: " + key);
        }

        Assert.IsFalse(before["blocks.0.attn.qkv.weight"].eq(twin["blocks.0.attn.qkv.weight"]).all().item<bool>(), "the twin changed with the update");
        var afterUpdate = bf16.Forward(images);
        Assert.IsLessThan(0.15f, ((fp32.Forward(images) - afterUpdate).abs().max() / afterUpdate.abs().max()).item<float>(), "bf16 output follows the updated fp32 teacher");
    }

    // §10.10
    [TestMethod]
    public void FixedPositionTablesStayFixed()
    {
        using var scope = NewDisposeScope();
        using var net = BootMaeNetwork.Create(Tiny, OfficialSettings.Create(), 1);
        var named = net.named_parameters().ToDictionary(kv => BootMaeNetwork.ToReferenceKey(kv.name), kv => kv.parameter);
        var tables = new[] { "pos_embed", "de_pos_embed" };
        var before = tables.ToDictionary(t => t, t => named[t].clone());
        foreach (var t in tables)
        {
            Assert.IsFalse(named[t].requires_grad, t + " is frozen");
            Assert.AreEqual(0f, named[t][0, 0].abs().sum().item<float>(), t + " row 0 (cls) is zero");
            Assert.IsLessThanOrEqualTo(1f, named[t].abs().max().item<float>(), t + " values in [-1, 1]");
        }

        using var optimizer = ParameterGroups.CreateAdamW(net, 1e-2, 0.05);
        using var teacher = new MomentumTeacher(net.Encoder);
        var gen = new MaskingGenerator(Tiny.GridSize, BootMaeMasking.BlockFill, 3);
        for (int step = 0; step < 2; step++)
        {
            using var inner = NewDisposeScope();
            using var masks = gen.Next(Batch);
            var images = Images(step);
            optimizer.ZeroGrad();
            var loss = BootMaeLosses.Compute(net, net.Forward(images, masks), images, masks, teacher.Forward(images), null, 1.0);
            loss.Total.backward();
            optimizer.Step();
            teacher.Update(net.Encoder, 0.9);
        }

        foreach (var t in tables)
        {
            TensorAssert.Equal(before[t], named[t], t + " unchanged after training");
        }
    }

    // §10.11
    [TestMethod]
    public void CrossAttentionReadsShallowAndDeepPreNormFeatures()
    {
        using var scope = NewDisposeScope();
        using var net = BootMaeNetwork.Create(Tiny, OfficialSettings.Create(), 1);
        using var masks = Masks();
        var images = Images(2);
        var fwd = net.Forward(images, masks);
        int nv = 1 + Tiny.NumPatches - masks.NumMasked;

        // Shallow is block 0's raw output; deep is the last block's raw output (LN(deep) is the encoder output).
        var x = net.Encoder.EmbedSubset(images, masks.IdsKeep);
        var block0 = net.Encoder.Blocks[0].forward(x);
        TensorAssert.Close(block0, fwd.Encoder.Shallow, 1e-6, 1e-6, "shallow = block 0 output");
        CollectionAssert.AreEqual(new long[] { Batch, nv, Tiny.EmbedDim }, fwd.Encoder.Deep.shape, "context length 1 + N − K");
        var ln = nn.functional.layer_norm(fwd.Encoder.Deep, new long[] { Tiny.EmbedDim }, net.Encoder.state_dict()["norm.weight"], net.Encoder.state_dict()["norm.bias"], 1e-6);
        TensorAssert.Close(ln, fwd.Encoder.Latent, 1e-5, 1e-5, "deep is before the final LN");

        // The regressor's output is the one computed with the shallow context; the predictor's with the deep one.
        TensorAssert.Equal(net.Regressor!.forward(fwd.Encoder.Latent, fwd.Encoder.Shallow, masks), fwd.Pixels, "regressor context");
        var withDeep = net.Regressor.forward(fwd.Encoder.Latent, fwd.Encoder.Deep, masks);
        Assert.IsTrue(withDeep.ne(fwd.Pixels).any().item<bool>(), "the context matters");
        TensorAssert.Equal(
            net.Predictor!.forward(fwd.Encoder.Latent, fwd.Encoder.Deep, masks, net.Encoder.PositionEmbedding), fwd.Features!, "predictor context");

        // Query length 1 + N, key/value length 1 + N_v.
        using var cross = new CrossAttention(Tiny.RegressorDim, Tiny.EmbedDim, Tiny.RegressorHeads);
        var o = cross.forward(randn(Batch, 1 + Tiny.NumPatches, Tiny.RegressorDim), randn(Batch, nv, Tiny.EmbedDim));
        CollectionAssert.AreEqual(new long[] { Batch, 1 + Tiny.NumPatches, Tiny.RegressorDim }, o.shape);
    }

    // §10.11, injection off
    [TestMethod]
    public void InjectionOffRemovesCrossAttentionParameters()
    {
        using var net = new BootMaeNetwork(Tiny, OfficialSettings.Create(s => { s.InjectRegressor = false; }));
        var keys = net.ReferenceStateDict().Keys.ToList();
        Assert.IsFalse(keys.Any(k => k.StartsWith("decode_blocks.", StringComparison.Ordinal) && (k.Contains("c_attn") || k.Contains("norm3") || k.Contains("norm4"))),
            "regressor has no cross-attention");
        Assert.IsTrue(keys.Any(k => k.StartsWith("decode_blocks_1.0.c_attn.", StringComparison.Ordinal)), "predictor keeps it");
        Assert.IsTrue(keys.Contains("decode_blocks_1.1.norm4.weight"), "each block has its own LN4");
        using var scope = NewDisposeScope();
        using var masks = Masks();
        var fwd = net.Forward(Images(1), masks);
        CollectionAssert.AreEqual(new long[] { Batch, 1, 28, 28 }, fwd.Pixels.shape);
    }

    // §10.13
    [TestMethod]
    public void WeightDecayGroups()
    {
        using var net = new BootMaeNetwork(Tiny, OfficialSettings.Create());
        var (decay, noDecay) = ParameterGroups.Split(net);
        var d = decay.Select(x => BootMaeNetwork.ToReferenceKey(x.Name)).ToHashSet();
        var nd = noDecay.Select(x => BootMaeNetwork.ToReferenceKey(x.Name)).ToHashSet();
        foreach (var key in new[] { "cls_token", "blocks.0.attn.q_bias", "blocks.0.norm1.weight", "blocks.0.mlp.fc1.bias", "norm.bias", "patch_embed.proj.bias", "lm_head.proj.bias" })
        {
            Assert.Contains(key, nd, key + " has no weight decay");
        }

        foreach (var key in new[] { "blocks.0.attn.qkv.weight", "patch_embed.proj.weight", "mask_token", "mask_token_1", "lm_head_1.weight", "decode_blocks.0.c_attn.kv.weight" })
        {
            Assert.Contains(key, d, key + " is decayed");
        }

        Assert.IsFalse(d.Contains("pos_embed") || nd.Contains("pos_embed") || nd.Contains("de_pos_embed"), "frozen tables are not optimized");
        using var optimizer = ParameterGroups.CreateAdamW(net, 1e-3, 0.05);
        var groups = optimizer.ParamGroups;
        Assert.AreEqual(0.05, groups[0].WeightDecay);
        Assert.AreEqual(0.0, groups[1].WeightDecay);
    }

    // §10.14
    [TestMethod]
    public void MaeModeHasOnePlainDecoderAndMaskedMeanLoss()
    {
        using var scope = NewDisposeScope();
        var settings = OfficialSettings.Create(s => { s.Mode = BootMaeMode.Mae; });
        using var net = BootMaeNetwork.Create(Tiny, settings, 1);
        var keys = net.ReferenceStateDict().Keys.ToList();
        Assert.IsFalse(keys.Any(k => k.Contains("_1.") || k.StartsWith("decode_", StringComparison.Ordinal) || k.Contains("c_attn")), "no predictor, regressor or cross-attention");
        Assert.AreEqual(8, net.Decoder!.Depth);
        Assert.AreEqual(8, keys.Where(k => k.StartsWith("decoder_blocks.", StringComparison.Ordinal)).Select(k => k.Split('.')[1]).Distinct().Count());
        var gen = MaskingGenerator.ForSettings(Tiny, settings, 1);
        Assert.AreEqual(BootMaeMasking.Random, gen.Strategy);

        using var masks = gen.Next(Batch);
        var images = Images(3);
        var pred = net.Forward(images, masks).Pixels;
        var loss = BootMaeLosses.MaeLoss(pred, images, masks.Mask, Tiny.PatchSize, normalize: false).item<float>();
        // Independent form: gather the masked patches' predictions and targets and average the per-patch MSE.
        var target = BootMaeLosses.Patchify(images, Tiny.PatchSize);
        long dim = pred.shape[2];
        var idx = masks.IdsMasked.unsqueeze(-1).expand(-1, -1, dim);
        var expected = (pred.gather(1, idx) - target.gather(1, idx)).square().mean().item<float>();
        Assert.AreEqual(expected, loss, 1e-5f * expected);
    }

    // The reconstruction preview maps predictions back with the losses' own statistics: the inverse of each target.
    [TestMethod]
    public void PreviewInvertsEachPixelTarget()
    {
        using var scope = NewDisposeScope();
        using var g = new Generator(4);
        var images = rand(new long[] { Batch, 3, 8, 8 }, generator: g) * 2 - 1;
        var bootMae = BootMaeLosses.PixelTarget(images, 4, normalize: true, epsilon: 1e-5);
        TensorAssert.Close(images, BootMaeLosses.FromPixelTarget(bootMae, images, 4, normalize: true, epsilon: 1e-5), 1e-5, 1e-5, "per-channel target");
        TensorAssert.Equal(images, BootMaeLosses.FromPixelTarget(images, images, 4, normalize: false, epsilon: 1e-5), "raw target");
        var (mean, std) = BootMaeLosses.MaePatchStatistics(BootMaeLosses.Patchify(images, 4));
        var mae = (BootMaeLosses.Patchify(images, 4) - mean) / std;
        TensorAssert.Close(images, BootMaeLosses.FromMaeTarget(mae, images, 2, 4, normalize: true), 1e-5, 1e-5, "whole-patch target");
        TensorAssert.Equal(images, BootMaeLosses.FromMaeTarget(BootMaeLosses.Patchify(images, 4), images, 2, 4, normalize: false), "raw MAE target");
    }

    // Teacher fraction (paper Table 5): L_P only on the sampled masked subset.
    [TestMethod]
    public void TeacherFractionRestrictsFeatureLossToTheSubset()
    {
        using var scope = NewDisposeScope();
        using var net = BootMaeNetwork.Create(Tiny, OfficialSettings.Create(s => { s.TeacherFraction = 0.25; }), 1);
        using var teacher = new MomentumTeacher(net.Encoder);
        using var masks = Masks();
        var images = Images(2);
        var (target, subset) = teacher.Targets(images, masks, 0.25, new Random(1));
        var ids = subset!;
        CollectionAssert.AreEqual(new long[] { Batch, 12 }, ids.shape);
        Assert.AreEqual(12f * Batch, masks.Mask.gather(1, ids).sum().item<float>(), "subset lies in the masked set");
        TensorAssert.Close(teacher.ForwardSubset(images, ids), target, 0, 0, "Targets = ForwardSubset");
        CollectionAssert.AreEqual(new long[] { Batch, 12, Tiny.EmbedDim }, target.shape);

        var fwd = net.Forward(images, masks);
        var features = fwd.Features!.detach().requires_grad_(true);
        var loss = BootMaeLosses.Compute(net, new BootMaeForward(fwd.Encoder, fwd.Pixels, features), images, masks, target, ids, 1.0);
        loss.Total.backward();
        var touched = features.grad!.abs().sum(-1).ne(0).to(ScalarType.Float32);
        var inSubset = zeros(Batch, Tiny.NumPatches).scatter(1, ids, ones(Batch, 12));
        TensorAssert.Equal(inSubset, touched, "L_P gradient exactly on the subset");
    }

    [TestMethod]
    public void CreateIsDeterministicPerSeed()
    {
        using var a = BootMaeNetwork.Create(Tiny, OfficialSettings.Create(), 7);
        using var b = BootMaeNetwork.Create(Tiny, OfficialSettings.Create(), 7);
        using var c = BootMaeNetwork.Create(Tiny, OfficialSettings.Create(), 8);
        var sa = a.state_dict();
        var sb = b.state_dict();
        foreach (var (key, value) in sa)
        {
            TensorAssert.Equal(value, sb[key], "same seed: " + key);
        }

        Assert.IsTrue(sa["encoder.blocks.0.attn.qkv.weight"].ne(c.state_dict()["encoder.blocks.0.attn.qkv.weight"]).any().item<bool>(), "another seed differs");
        // Spec §2.6: mask tokens truncated at ±0.02, q/v biases 0, cls tiny.
        Assert.IsLessThanOrEqualTo(0.02f, sa["regressor.mask_token"].abs().max().item<float>());
        Assert.AreEqual(0f, sa["encoder.blocks.1.attn.v_bias"].abs().sum().item<float>());
        Assert.IsLessThan(1e-4f, sa["encoder.cls_token"].abs().max().item<float>());
    }

    // mlnet-integration §5: a train step inside a dispose scope leaks no tensors.
    [TestMethod]
    public void TrainStepsDoNotLeakTensors()
    {
        using var net = BootMaeNetwork.Create(Tiny, OfficialSettings.Create(), 1);
        using var teacher = new MomentumTeacher(net.Encoder);
        using var optimizer = ParameterGroups.CreateAdamW(net, 1e-3, 0.05);
        var gen = new MaskingGenerator(Tiny.GridSize, BootMaeMasking.BlockFill, 3);
        long live = 0;
        for (int step = 0; step < 4; step++)
        {
            using (var scope = NewDisposeScope())
            {
                var masks = gen.Next(Batch);
                var images = Images(step);
                optimizer.ZeroGrad();
                var loss = BootMaeLosses.Compute(net, net.Forward(images, masks), images, masks, teacher.Forward(images), null, 1.0);
                loss.Total.backward();
                optimizer.Step();
                teacher.Update(net.Encoder, 0.99);
            }

            if (step == 1)
            {
                live = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
            }
        }

        Assert.AreEqual(live, DisposeScopeManager.Statistics.ThreadTotalLiveCount, "live tensors stay flat");
    }
}
