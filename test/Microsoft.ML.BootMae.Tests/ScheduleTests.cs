using Microsoft.ML.BootMae.Training;
using Microsoft.VisualStudio.TestTools.UnitTesting;

namespace Microsoft.ML.BootMae.Tests;

/// <summary>Spec §10.12: the schedules of a run, as fractions of it.</summary>
[TestClass]
public sealed class ScheduleTests
{
    // Batch 256, so the scaled peak is the base learning rate itself.
    private static Schedules Create(long steps = 1000) => Schedules.ForPretraining(steps, new BootMaePretrainerSettings
    {
        BatchSize = 256, LearningRate = 1e-3, MinLearningRateFraction = 0.01, WarmupFraction = 0.05, FeatureLossWeight = 1.0, FeatureLossRampFraction = 0.25,
        EmaMomentumStart = 0.99, EmaMomentumMid = 0.999, EmaMomentumEnd = 0.9999, EmaRamp1Fraction = 0.125, EmaRamp2EndFraction = 0.5,
    });

    [TestMethod]
    public void LearningRateWarmsUpThenReachesTheMinimumAtTheLastStep()
    {
        var s = Create();

        Assert.AreEqual(0.0, s.LearningRate(0));
        Assert.AreEqual(50, s.WarmupSteps);
        Assert.AreEqual(1e-3, s.LearningRate(49), 1e-15, "base value at the end of warmup");
        Assert.AreEqual(1e-5, s.LearningRate(999), 1e-15, "minimum at the last step");
        var values = Enumerable.Range(0, 1000).Select(i => s.LearningRate(i)).ToList();
        Assert.IsTrue(values.Take(50).Zip(values.Skip(1).Take(49)).All(p => p.Second > p.First), "warmup rises");
        Assert.IsTrue(values.Skip(50).Zip(values.Skip(51)).All(p => p.Second <= p.First), "cosine falls");
    }

    [TestMethod]
    public void FeatureWeightReachesLambdaAtAQuarterOfTheRun()
    {
        var s = Create();

        Assert.IsLessThan(0.01, s.FeatureLossWeight(0));
        Assert.AreEqual(1.0, s.FeatureLossWeight(249));
        Assert.IsTrue(Enumerable.Range(250, 750).All(i => s.FeatureLossWeight(i) == 1.0));
        Assert.AreEqual(0.5, s.FeatureLossWeight(124), 1e-12);
    }

    [TestMethod]
    public void EmaMomentumNeverDecreasesAndFollowsItsRamps()
    {
        var s = Create();
        var values = Enumerable.Range(0, 1000).Select(i => s.EmaMomentum(i)).ToList();

        Assert.AreEqual(0.99, values[0]);
        Assert.AreEqual(0.999, values[125], 1e-12);
        Assert.AreEqual(0.9999, values[500], 1e-12);
        Assert.IsTrue(values.Zip(values.Skip(1)).All(p => p.Second >= p.First));
    }

    [TestMethod]
    public void ScaledMomentaKeepTheHorizonInProportion()
    {
        var (start, mid, end) = Schedules.ScaledEmaMomenta(20_000);

        // Spec §7.1: T = 20k steps gives m ≈ 0.9875 → 0.99875 → 0.999875.
        Assert.AreEqual(0.9875, start, 1e-9);
        Assert.AreEqual(0.99875, mid, 1e-9);
        Assert.AreEqual(0.999875, end, 1e-9);
        Assert.AreEqual(0.5, Schedules.ScaledEmaMomenta(10).Start, "short runs are clamped so the teacher still averages");
    }
}
