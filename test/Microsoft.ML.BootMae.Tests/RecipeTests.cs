using Microsoft.ML.BootMae.Modules;
using Microsoft.ML.BootMae.Training;
using Microsoft.VisualStudio.TestTools.UnitTesting;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Tests;

/// <summary>The small-scale recipe of issue 9: feature-target normalisation, diagnostics, EMA floor, pixel ε, layer decay.</summary>
[TestClass]
public sealed class RecipeTests
{
    private const int Batch = 4;

    // The invariant tests' tiny shape: 28×28 grey, patch 4 (a 7×7 grid, where the sin-cos table's shared part dominates).
    private static BootMaeArchitecture Tiny => InvariantTests.Tiny;

    private static Tensor Images(int seed)
    {
        using var g = new Generator((ulong)seed);
        return (rand(new long[] { Batch, 1, 28, 28 }, generator: g) * 2) - 1;
    }

    // A teacher output dominated by one vector that every token of every image shares (as the sin-cos table does on a
    // 7×7 grid), plus a small per-token part: LayerNorm alone keeps the shared part, standardisation removes it.
    private static Tensor SharedDominatedTeacher(int seed)
    {
        using var g = new Generator((ulong)seed);
        var shared = randn(new long[] { 1, 1, Tiny.EmbedDim }, generator: g) * 20;
        return shared + randn(new long[] { Batch, Tiny.NumPatches, Tiny.EmbedDim }, generator: g);
    }

    [TestMethod]
    public void BatchStandardizedTargetRemovesTheSharedComponentThatLayerNormKeeps()
    {
        using var scope = NewDisposeScope();
        var teacher = SharedDominatedTeacher(3);
        var mask = ones(Batch, Tiny.NumPatches);
        var prediction = randn(Batch, Tiny.NumPatches, Tiny.EmbedDim);
        var ln = BootMaeLosses.FeatureLoss(prediction, teacher, mask, mask, null, BootMaeFeatureTargetNormalization.LayerNorm, diagnostics: true);
        var std = BootMaeLosses.FeatureLoss(prediction, teacher, mask, mask, null, BootMaeFeatureTargetNormalization.BatchStandardized, diagnostics: true);
        float lnShared = ln.TargetSharedEnergy!.item<float>(), stdShared = std.TargetSharedEnergy!.item<float>();
        Assert.IsGreaterThan(0.95f, lnShared, "LayerNorm alone: the target is nearly the same for every token");
        Assert.IsLessThan(0.1f, stdShared, "standardised: little is shared");

        // Standardised then LN'd: every channel has mean ≈ 0 over the batch's tokens, and each token is unit-normalised.
        var target = BootMaeLosses.FeatureTarget(teacher, BootMaeFeatureTargetNormalization.BatchStandardized);
        Assert.IsLessThan(0.1f, target.mean(new long[] { 0, 1 }).abs().max().item<float>());
        Assert.AreEqual(1f, target.var(-1, unbiased: false).mean().item<float>(), 1e-3f);

        // With the weight mask equal to the mask, the weighted and unweighted losses agree.
        Assert.AreEqual(std.Loss.item<float>(), std.Unweighted!.item<float>(), 1e-6f);
    }

    [TestMethod]
    public void LayerNormTargetIsTheOfficialOne()
    {
        using var scope = NewDisposeScope();
        var teacher = SharedDominatedTeacher(4);
        TensorAssert.Equal(BootMaeLosses.FeatureNorm(teacher), BootMaeLosses.FeatureTarget(teacher, BootMaeFeatureTargetNormalization.LayerNorm), "LN target");
        Assert.AreEqual(BootMaeFeatureTargetNormalization.BatchStandardized, new BootMaePretrainerSettings().FeatureTargetNormalization, "users get the measured recipe");
    }

    [TestMethod]
    public void DiagnosticsReportTheZeroPredictionBaselineAndUnweightedLosses()
    {
        using var scope = NewDisposeScope();
        using var net = BootMaeNetwork.Create(Tiny, OfficialSettings.Create(), 1);
        using var masks = new MaskingGenerator(Tiny.GridSize, BootMaeMasking.BlockFill, 2).Next(Batch);
        var images = Images(5);
        var forward = net.Forward(images, masks);
        var teacher = randn(Batch, Tiny.NumPatches, Tiny.EmbedDim);
        var withDiagnostics = BootMaeLosses.Compute(net, forward, images, masks, teacher, null, 1.0, diagnostics: true);
        var plain = BootMaeLosses.Compute(net, forward, images, masks, teacher, null, 1.0);
        Assert.IsNull(plain.Diagnostics, "no diagnostics unless asked");
        Assert.AreEqual(plain.Total.item<float>(), withDiagnostics.Total.item<float>(), "diagnostics do not change the loss");
        var d = withDiagnostics.Diagnostics!;

        // The baseline is exactly the loss of a zero prediction.
        var zero = new BootMaeForward(forward.Encoder, zeros_like(forward.Pixels), forward.Features);
        var zeroLoss = BootMaeLosses.Compute(net, zero, images, masks, teacher, null, 1.0);
        Assert.AreEqual(zeroLoss.Pixel!.item<float>(), d.PixelZeroBaseline!.item<float>(), 1e-5f);

        // Unweighted equals the loss with the weight mask switched off.
        using var unweightedNet = BootMaeNetwork.Create(Tiny, OfficialSettings.Create(s => { s.WeightMask = false; }), 1);
        var unweighted = BootMaeLosses.Compute(unweightedNet, forward, images, masks, teacher, null, 1.0);
        Assert.AreEqual(unweighted.Pixel!.item<float>(), d.PixelUnweighted!.item<float>(), 1e-5f);
        Assert.AreEqual(unweighted.Feature!.item<float>(), d.FeatureUnweighted!.item<float>(), 1e-5f);
        Assert.IsTrue(d.FeatureTargetSharedEnergy!.item<float>() is >= 0 and <= 1, "a share");
    }

    [TestMethod]
    public void PixelEpsilonDampsFlatPatches()
    {
        using var scope = NewDisposeScope();
        // A flat image with noise of a few grey levels: ε 1e-5 blows it up to unit variance, ε 1e-2 keeps it near 0.
        using var g = new Generator(9);
        var images = full(new long[] { 1, 1, 28, 28 }, -1f) + (rand(new long[] { 1, 1, 28, 28 }, generator: g) * (6f / 255));
        float official = BootMaeLosses.PixelTarget(images, 4, true, 1e-5).square().mean().item<float>();
        float damped = BootMaeLosses.PixelTarget(images, 4, true, 1e-2).square().mean().item<float>();
        Assert.IsGreaterThan(0.5f, official);
        Assert.IsLessThan(0.01f, damped);
        Assert.ThrowsExactly<ArgumentException>(() => new BootMaePretrainerSettings { PixelTargetEpsilon = 0 }.Validate());
    }

    [TestMethod]
    public void ScaledEmaMomentaHaveAFloorButExplicitValuesWin()
    {
        var s = new BootMaePretrainerSettings();
        var schedules = Schedules.ForPretraining(395, s);
        Assert.AreEqual(0.996, schedules.EmaMomentum(0), 1e-12, "a 395-step run scaled without a floor starts at 0.5");
        Assert.IsGreaterThanOrEqualTo(0.996, schedules.EmaMomentum(100));

        // Long runs keep the scaled values, which are above the floor.
        var longRun = Schedules.ForPretraining(250_000, s);
        Assert.AreEqual(Schedules.ScaledEmaMomenta(250_000).End, longRun.EmaMomentum(249_999), 1e-12);

        var log = new List<string>();
        var explicitMomenta = Schedules.ForPretraining(395, new BootMaePretrainerSettings { EmaMomentumStart = 0.9, EmaMomentumMid = 0.95, EmaMomentumEnd = 0.99 }, log.Add);
        Assert.AreEqual(0.9, explicitMomenta.EmaMomentum(0), 1e-12);
        Assert.AreEqual(0.99, explicitMomenta.EmaMomentum(394), 1e-12);
        Schedules.ForPretraining(395, s, log.Add);
        Assert.IsEmpty(log, "nothing given is raised: nothing is logged");
    }

    [TestMethod]
    public void RaisedEmaMomentaAreLoggedInOneLine()
    {
        // Momenta never decrease: a given Mid and End below the Start are raised to it, and the log says so once.
        var log = new List<string>();
        var settings = new BootMaePretrainerSettings { EmaMomentumStart = 0.99, EmaMomentumMid = 0.95, EmaMomentumEnd = 0.9 };

        var schedules = Schedules.ForPretraining(400, settings, log.Add);

        Assert.AreEqual(0.99, schedules.EmaMid, 1e-15);
        Assert.AreEqual(0.99, schedules.EmaEnd, 1e-15);
        Assert.HasCount(1, log, string.Join("\n", log));
        StringAssert.Contains(log[0], "EmaMomentumMid from 0.95 to 0.99");
        StringAssert.Contains(log[0], "EmaMomentumEnd from 0.9 to 0.99");

        // Only End below Mid: only End is named. A scaled (null) Mid raised to a high Start is not a user value and is not logged.
        log.Clear();
        Schedules.ForPretraining(400, new BootMaePretrainerSettings { EmaMomentumMid = 0.999, EmaMomentumEnd = 0.998 }, log.Add);
        Assert.HasCount(1, log);
        StringAssert.Contains(log[0], "EmaMomentumEnd from 0.998 to 0.999");
        Assert.DoesNotContain("EmaMomentumMid", log[0]);
        log.Clear();
        Schedules.ForPretraining(400, new BootMaePretrainerSettings { EmaMomentumStart = 0.9999 }, log.Add);
        Assert.IsEmpty(log);

        // Through Train, to the run's log callback.
        var split = FashionMnistSample.LoadArrays(trainPerClass: 2, testPerClass: 0).Train;
        var pixels = new float[split.Count * 784];
        for (int i = 0; i < split.Count; i++)
        {
            split.GetImage(i).CopyTo(pixels, i * 784);
        }

        var run = new BootMaePretrainerSettings
        {
            MaxEpochs = 1, MaxSteps = 1, BatchSize = 20, Seed = 3, Device = BootMaeDevice.Cpu, Precision = BootMaePrecision.Float32,
            EmaMomentumStart = 0.99, EmaMomentumMid = 0.95,
        };
        var lines = new List<string>();
        using (new BootMaePretrainer(PretrainerTests.Tiny, run).Train(new InMemoryImageSource(pixels, null, split.Count, 1, 28, 3, shuffle: true), log: lines.Add))
        {
        }

        Assert.AreEqual(1, lines.Count(l => l.StartsWith("Raised EmaMomentumMid from 0.95 to 0.99", StringComparison.Ordinal)), string.Join("\n", lines));
    }

    [TestMethod]
    public void AutoLayerDecayFollowsDepthAndScratchGetsNone()
    {
        Assert.AreEqual(1.0, FineTuneSettings.AutoLayerDecay(4));
        Assert.AreEqual(0.65, FineTuneSettings.AutoLayerDecay(12));
        Assert.AreEqual(0.65, FineTuneSettings.AutoLayerDecay(24));
        double mid = FineTuneSettings.AutoLayerDecay(8);
        Assert.IsTrue(mid is > 0.65 and < 1.0, $"between: {mid}");
    }

    [TestMethod]
    public void PretrainingReportsDiagnosticsAndWarnsWhenTheFeatureTargetCollapses()
    {
        // On a 7×7 grid the shared sin-cos component dominates an LN-only target; standardising removes it.
        var (ln, lnLogs) = ShortRun(BootMaeFeatureTargetNormalization.LayerNorm);
        var (std, stdLogs) = ShortRun(BootMaeFeatureTargetNormalization.BatchStandardized);
        Assert.IsNotNull(ln.PixelLossZeroBaseline);
        Assert.IsNotNull(ln.PixelLossUnweighted);
        Assert.IsNotNull(ln.FeatureLossUnweighted);
        Assert.IsGreaterThan(0.9f, ln.FeatureTargetSharedEnergy!.Value, "LN only");
        Assert.IsLessThan(0.5f, std.FeatureTargetSharedEnergy!.Value, "standardised");
        Assert.IsTrue(lnLogs.Any(l => l.Contains("feature target has collapsed", StringComparison.Ordinal)), string.Join("\n", lnLogs));
        Assert.IsFalse(stdLogs.Any(l => l.Contains("feature target has collapsed", StringComparison.Ordinal)), string.Join("\n", stdLogs));
    }

    private static (BootMaeTrainingMetrics Last, List<string> Logs) ShortRun(BootMaeFeatureTargetNormalization normalization)
    {
        var split = FashionMnistSample.LoadArrays(trainPerClass: 16, testPerClass: 1).Train;
        var pixels = new float[split.Count * 784];
        for (int i = 0; i < split.Count; i++)
        {
            split.GetImage(i).CopyTo(pixels, i * 784);
        }

        var logs = new List<string>();
        BootMaeTrainingMetrics? last = null;
        var settings = new BootMaePretrainerSettings
        {
            MaxEpochs = 3, BatchSize = 16, Seed = 3, Device = BootMaeDevice.Cpu, Precision = BootMaePrecision.Float32,
            LearningRate = 4e-3, FeatureTargetNormalization = normalization, LogEveryNSteps = 100,
        };
        // The samples' small28 shape (D 128, 4 blocks, 7×7 grid), where the collapse was measured.
        var small28 = BootMaeArchitecture.Small28 with { DecoderDepth = 1 };
        using (new BootMaePretrainer(small28, settings).Train(new InMemoryImageSource(pixels, null, split.Count, 1, 28, 3, shuffle: true), m => last = m, logs.Add))
        {
        }

        return (last!, logs);
    }
}
