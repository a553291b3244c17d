using System.Globalization;
using System.Text.Json;
using Microsoft.ML.BootMae.Interop;
using Microsoft.ML.BootMae.Training;
using Microsoft.VisualStudio.TestTools.UnitTesting;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Tests;

/// <summary>
/// Trajectory parity with tools/make_trajectory_fixture.py (python3-torch 1.13, CPU, fp32): 200 steps of the real
/// <see cref="BootMaePretrainer"/> loop (25 epochs × 8 batches of 4), from the fixture's initial weights, data order
/// and masks (injected through <see cref="PretrainingHooks"/>), against PyTorch's AdamW, losses, EMA and an
/// independent implementation of the engine's schedules.
/// Tolerances (measured with 1, 2 and 16 torch threads against the fixture's 1; the perturbations were temporary edits of Schedules):
/// <list type="bullet">
/// <item>lr, λ and m actually used: 1e-12 relative. Both sides compute the same double formulas (measured: bit-identical).</item>
/// <item>Per-step L, L_R, L_P: 2e-5 relative at every step (measured max 1.7e-6 over both runs). An EMA momentum one step
/// late moves them by 2e-4 to 5e-3, the official cosine divisor (T − W instead of T − W − 1) by 9e-5 to 2e-3, an lr one
/// step early, λ per epoch or λ without the +1 by 3e-2 or more.</item>
/// <item>Final student and teacher weights, every element: 2e-5 absolute (|w| ≲ 2; measured max 1.4e-6). The same
/// perturbations move them by 8e-5 to 8e-2.</item>
/// </list>
/// </summary>
[TestClass]
public sealed class TrajectoryParityTests
{
    private const double ScheduleRtol = 1e-12;
    private const double LossRtol = 2e-5;
    private const double WeightAtol = 2e-5;

    public TestContext TestContext { get; set; } = null!;

    private static string Dir => Path.Combine(AppContext.BaseDirectory, "TestData", "parity");

    [TestMethod]
    [DataRow("layernorm")]
    [DataRow("batchstd")]
    public void TwoHundredPretrainingStepsMatchPyTorch(string run)
    {
        using var scope = NewDisposeScope();
        var f = Safetensors.Load(Path.Combine(Dir, "trajectory.safetensors"));
        var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(Dir, "trajectory.json"))).RootElement;
        var cfg = doc.GetProperty("config");
        var runDoc = doc.GetProperty("runs").GetProperty(run);
        var settings = Settings(runDoc.GetProperty("settings"));
        var a = ParityTests.Architecture;
        int n = a.GridSize * a.GridSize, numKeep = cfg.GetProperty("num_keep").GetInt32(), batch = settings.BatchSize;
        long total = doc.GetProperty("total_steps").GetInt64();

        var weights = f.Where(kv => kv.Key.StartsWith("w.", StringComparison.Ordinal)).ToDictionary(kv => kv.Key[2..], kv => kv.Value);
        weights["pos_embed"] = f["table.pos_embed"];
        weights["de_pos_embed"] = f["table.de_pos_embed"];
        long[] shuffles = f["in.ids_shuffle"].data<long>().ToArray();
        var source = new FixtureSource(f["in.pool"].data<float>().ToArray(), f["in.order"].data<long>().ToArray(), batch, a.Channels * a.ImageSize * a.ImageSize);

        var traces = new List<PretrainingStepTrace>();
        Dictionary<string, float[]>? student = null, teacher = null;
        var hooks = new PretrainingHooks
        {
            InitializeNetwork = net => net.LoadReferenceStateDict(weights),
            Masks = (step, count, device) => MaskBatch.FromShuffle(shuffles.AsSpan((int)(step * count * n), count * n).ToArray(), count, n, numKeep, device),
            AfterStep = t =>
            {
                traces.Add(t);
                if (t.Step == total - 1)
                {
                    student = t.Network.ReferenceStateDict().ToDictionary(kv => kv.Key, kv => Values(kv.Value));
                    teacher = t.Teacher!.Encoder.state_dict().ToDictionary(kv => kv.Key, kv => Values(kv.Value));
                }
            },
        };
        using (new BootMaePretrainer(a, settings) { Hooks = hooks }.Train(source))
        {
        }

        Assert.HasCount((int)total, traces);
        var expected = runDoc.GetProperty("trace");
        double[] Series(string name) => expected.GetProperty(name).EnumerateArray().Select(e => e.GetDouble()).ToArray();
        var (lr, lambda, momentum) = (Series("lr"), Series("lambda"), Series("momentum"));
        var (lossTotal, lossPixel, lossFeature) = (Series("total"), Series("pixel"), Series("feature"));
        double maxSchedule = 0, maxLoss = 0;
        for (int i = 0; i < total; i++)
        {
            var t = traces[i];
            Assert.AreEqual(i, t.Step, "step order");
            Check(ref maxSchedule, lr[i], t.LearningRate, ScheduleRtol, "lr", i);
            Check(ref maxSchedule, lambda[i], t.FeatureWeight, ScheduleRtol, "λ", i);
            Check(ref maxSchedule, momentum[i], t.EmaMomentum!.Value, ScheduleRtol, "EMA momentum", i);
            Check(ref maxLoss, lossTotal[i], t.Total, LossRtol, "L", i);
            Check(ref maxLoss, lossPixel[i], t.Pixel!.Value, LossRtol, "L_R", i);
            Check(ref maxLoss, lossFeature[i], t.Feature!.Value, LossRtol, "L_P", i);
        }

        double maxStudent = CheckWeights(f, run + ".student.", student!, "student");
        double maxTeacher = CheckWeights(f, run + ".teacher.", teacher!, "teacher");
        TestContext.WriteLine(string.Format(CultureInfo.InvariantCulture,
            "{0}: max relative deviation of schedules {1:E2}, of losses {2:E2}; max |Δ| of final student {3:E2}, teacher {4:E2}",
            run, maxSchedule, maxLoss, maxStudent, maxTeacher));
    }

    private static void Check(ref double worst, double expected, double actual, double rtol, string what, int step)
    {
        double rel = Math.Abs(actual - expected) / Math.Max(Math.Abs(expected), 1e-30);
        worst = Math.Max(worst, rel);
        Assert.IsLessThanOrEqualTo(rtol, rel, string.Format(CultureInfo.InvariantCulture,
            "{0} at step {1}: C# {2:R}, PyTorch {3:R} (relative deviation {4:E2} > {5:E1})", what, step, actual, expected, rel, rtol));
    }

    private static float[] Values(Tensor t) => t.detach().cpu().flatten().data<float>().ToArray();

    // Every fixture tensor under prefix against the C# weights of the same reference key; returns the largest |Δ|.
    private static double CheckWeights(Dictionary<string, Tensor> f, string prefix, Dictionary<string, float[]> actual, string what)
    {
        double worst = 0;
        var keys = f.Keys.Where(k => k.StartsWith(prefix, StringComparison.Ordinal)).ToList();
        var uncovered = actual.Keys.Except(keys.Select(k => k[prefix.Length..])).Where(k => !k.EndsWith("pos_embed", StringComparison.Ordinal));
        Assert.IsEmpty(uncovered, $"{what}: every tensor but the fixed sin-cos tables is compared");
        foreach (var key in keys)
        {
            var e = Values(f[key]);
            var got = actual[key[prefix.Length..]];
            Assert.HasCount(e.Length, got, key);
            double maxAbs = e.Zip(got, (x, y) => Math.Abs((double)y - x)).Max();
            worst = Math.Max(worst, maxAbs);
            Assert.IsLessThanOrEqualTo(WeightAtol, maxAbs, string.Format(CultureInfo.InvariantCulture,
                "final {0} {1}: max |Δ| {2:E2} > {3:E1}", what, key[prefix.Length..], maxAbs, WeightAtol));
        }

        return worst;
    }

    private static BootMaePretrainerSettings Settings(JsonElement s) => new()
    {
        BatchSize = s.GetProperty("BatchSize").GetInt32(),
        MaxEpochs = s.GetProperty("MaxEpochs").GetInt32(),
        LearningRate = s.GetProperty("LearningRate").GetDouble(),
        MinLearningRateFraction = s.GetProperty("MinLearningRateFraction").GetDouble(),
        WarmupFraction = s.GetProperty("WarmupFraction").GetDouble(),
        WeightDecay = s.GetProperty("WeightDecay").GetDouble(),
        FeatureLossWeight = s.GetProperty("FeatureLossWeight").GetDouble(),
        FeatureLossRampFraction = s.GetProperty("FeatureLossRampFraction").GetDouble(),
        EmaRamp1Fraction = s.GetProperty("EmaRamp1Fraction").GetDouble(),
        EmaRamp2EndFraction = s.GetProperty("EmaRamp2EndFraction").GetDouble(),
        EmaMomentumFloor = s.GetProperty("EmaMomentumFloor").GetDouble(),
        FeatureTargetNormalization = Enum.Parse<BootMaeFeatureTargetNormalization>(s.GetProperty("FeatureTargetNormalization").GetString()!),
        PixelTargetEpsilon = s.GetProperty("PixelTargetEpsilon").GetDouble(),
        WeightMask = s.GetProperty("WeightMask").GetBoolean(),
        MaskRatio = s.GetProperty("MaskRatio").GetDouble(),
        Augment = s.GetProperty("Augment").GetBoolean(),
        Device = BootMaeDevice.Cpu,
        Precision = BootMaePrecision.Float32,
        LogEveryNSteps = 1000,
    };

    // The fixture's data order: step k of the run reads pool[order[k, 0..B−1]]; epoch e is steps e·S … e·S + S − 1.
    private sealed class FixtureSource(float[] pool, long[] order, int batch, int perImage) : IImageBatchSource
    {
        public long? Count => pool.Length / perImage;

        public IEnumerable<ImageBatch> ReadEpoch(int epoch, int batchSize, CancellationToken cancellationToken)
        {
            Assert.AreEqual(batch, batchSize);
            long stepsPerEpoch = Count!.Value / batch;
            for (long k = epoch * stepsPerEpoch; k < (epoch + 1) * stepsPerEpoch; k++)
            {
                var pixels = new float[batch * perImage];
                for (int b = 0; b < batch; b++)
                {
                    Array.Copy(pool, order[(k * batch) + b] * perImage, pixels, (long)b * perImage, perImage);
                }

                yield return new ImageBatch(pixels, batch, null);
            }
        }
    }
}
