using Microsoft.ML.BootMae.Training;
using Microsoft.VisualStudio.TestTools.UnitTesting;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Tests;

[TestClass]
public sealed class PretrainerTests
{
    // 28×28 grey, patch 7 → a 4×4 grid; tiny widths keep each step a few milliseconds.
    internal static readonly BootMaeArchitecture Tiny = new()
    {
        ImageSize = 28, PatchSize = 7, Channels = 1, EmbedDim = 32, Depth = 2, Heads = 2,
        RegressorDim = 32, RegressorHeads = 2, PredictorHeads = 2, DecoderDepth = 1,
    };

    private static InMemoryImageSource FashionSource(int perClass, int seed = 11)
    {
        var split = FashionMnistSample.LoadArrays(trainPerClass: perClass, testPerClass: 1).Train;
        var pixels = new float[split.Count * 28 * 28];
        for (int i = 0; i < split.Count; i++)
        {
            split.GetImage(i).CopyTo(pixels, i * 28 * 28);
        }

        return new InMemoryImageSource(pixels, null, split.Count, 1, 28, seed, shuffle: true);
    }

    private static BootMaePretrainerSettings Settings(int epochs = 2) => new()
    {
        MaxEpochs = epochs, BatchSize = 16, LearningRate = 4e-3, Seed = 5, Device = BootMaeDevice.Cpu,
        Precision = BootMaePrecision.Float32, LogEveryNSteps = 1,
    };

    private static float[] Weights(BootMaeEncoder encoder)
    {
        using var scope = NewDisposeScope();
        return encoder.Module.parameters().SelectMany(p => p.detach().cpu().flatten().data<float>().ToArray()).ToArray();
    }

    private static string TempDirectory() => Path.Combine(Path.GetTempPath(), "bootmae-ckpt-" + Guid.NewGuid().ToString("N"));

    [TestMethod]
    public void LossGoesDownAndMetricsAreComplete()
    {
        var metrics = new List<BootMaeTrainingMetrics>();
        var settings = Settings(epochs: 6);
        settings.LogEveryNSteps = 1000;

        using var encoder = new BootMaePretrainer(Tiny, settings).Train(FashionSource(16), metrics.Add);

        var epochs = metrics.Where(m => m.IsEpochEnd).ToList();
        Assert.HasCount(6, epochs);
        // The total L_R + λ·L_P can rise while λ ramps up (a non-collapsed feature target costs about 1), so each part is checked.
        Assert.IsLessThan(epochs[0].PixelLoss!.Value, epochs[^1].PixelLoss!.Value, "pixel loss should fall");
        Assert.IsLessThan(epochs[1].FeatureLoss!.Value, epochs[^1].FeatureLoss!.Value, "feature loss should fall once λ is up");
        Assert.IsTrue(epochs.All(m => m.PixelLossZeroBaseline is > 0 && m.FeatureTargetSharedEnergy is >= 0 and <= 1), "diagnostics reported");
        Assert.IsTrue(epochs.All(m => m.PixelLoss is > 0 && m.FeatureLoss is >= 0 && m.EmaMomentum is > 0 && m.FeatureWeight is > 0));
        Assert.AreEqual(60, epochs[^1].Step);
        Assert.AreEqual(60, epochs[^1].TotalSteps);
        Assert.AreEqual(TimeSpan.Zero, epochs[^1].Eta);
        Assert.IsGreaterThan(0, epochs[^1].ImagesPerSecond);
    }

    [TestMethod]
    public void SameSeedGivesBitIdenticalWeights()
    {
        using var first = new BootMaePretrainer(Tiny, Settings()).Train(FashionSource(4));
        using var second = new BootMaePretrainer(Tiny, Settings()).Train(FashionSource(4));
        var otherSettings = Settings();
        otherSettings.Seed = 6;
        using var other = new BootMaePretrainer(Tiny, otherSettings).Train(FashionSource(4));

        CollectionAssert.AreEqual(Weights(first), Weights(second));
        CollectionAssert.AreNotEqual(Weights(first), Weights(other));
    }

    [TestMethod]
    [DataRow(BootMaeMode.BootMae)]
    [DataRow(BootMaeMode.Mae)]
    public void ResumeContinuesExactly(BootMaeMode mode)
    {
        // 3 epochs × 3 steps straight, versus cancel after step 4 (mid-epoch), checkpoint, a fresh trainer, resume.
        var straightSettings = Settings(epochs: 3);
        straightSettings.Mode = mode;
        using var straight = new BootMaePretrainer(Tiny, straightSettings).Train(FashionSource(4));

        var directory = TempDirectory();
        using var cts = new CancellationTokenSource();
        var firstHalf = Settings(epochs: 3);
        firstHalf.Mode = mode;
        firstHalf.CheckpointDirectory = directory;
        Assert.ThrowsExactly<OperationCanceledException>(() =>
            new BootMaePretrainer(Tiny, firstHalf).Train(FashionSource(4), m =>
            {
                if (m.Step == 4)
                {
                    cts.Cancel();
                }
            }, cancellationToken: cts.Token));
        Assert.IsTrue(Directory.Exists(Path.Combine(directory, "step-00000004")), "cancellation writes a checkpoint");

        var secondHalf = Settings(epochs: 3);
        secondHalf.Mode = mode;
        secondHalf.CheckpointDirectory = directory;
        secondHalf.ResumeFromCheckpoint = true;
        var log = new List<string>();
        var steps = new List<long>();
        using var resumed = new BootMaePretrainer(Tiny, secondHalf).Train(FashionSource(4), m => steps.Add(m.Step), log.Add);

        Assert.IsTrue(log.Any(l => l.Contains("Resumed from", StringComparison.Ordinal)));
        Assert.AreEqual(5, steps.Min(), "the resumed run starts at step 5");
        CollectionAssert.AreEqual(Weights(straight), Weights(resumed));
    }

    [TestMethod]
    public void CancellationCanReturnTheModel()
    {
        using var cts = new CancellationTokenSource();
        var settings = Settings(epochs: 50);
        settings.ReturnModelOnCancellation = true;
        long lastStep = 0;

        using var encoder = new BootMaePretrainer(Tiny, settings).Train(FashionSource(4), m =>
        {
            lastStep = m.Step;
            if (m.Step == 2)
            {
                cts.Cancel();
            }
        }, cancellationToken: cts.Token);

        Assert.AreEqual(2, lastStep, "stops within one step of the cancel");
        Assert.AreEqual(Tiny, encoder.Architecture);
    }

    [TestMethod]
    public void NonFiniteLossStopsWithAClearErrorAndKeepsTheLastCheckpoint()
    {
        var directory = TempDirectory();
        var settings = Settings(epochs: 4);
        settings.CheckpointDirectory = directory;
        settings.CheckpointEveryNSteps = 1;
        settings.WarmupFraction = 0.5;
        settings.LearningRate = 1e9;

        var error = Assert.ThrowsExactly<BootMaeTrainingException>(() => new BootMaePretrainer(Tiny, settings).Train(FashionSource(4)));

        StringAssert.Contains(error.Message, "The pretraining loss became");
        StringAssert.Contains(error.Message, "Lower LearningRate");
        StringAssert.Contains(error.Message, "last good checkpoint");
        var found = PretrainingCheckpoint.FindLatestValid(directory, Tiny, FingerprintOf(settings, 12), null);
        Assert.IsNotNull(found, "the last checkpoint is still valid");
    }

    [TestMethod]
    public void NonFiniteLossBetweenReportsNamesItsFirstStepAndIsNeverCheckpointed()
    {
        // Losses are read on the host at reports and checkpoints only; here at epoch ends.
        var directory = TempDirectory();
        var settings = Settings(epochs: 4);
        settings.CheckpointDirectory = directory;
        settings.LogEveryNSteps = 1000;
        settings.WarmupFraction = 0.5;
        settings.LearningRate = 1e9;
        var totals = new List<(long Step, float Total)>();
        var hooks = new PretrainingHooks { AfterStep = t => totals.Add((t.Step, t.Total)) };

        // 10 steps per epoch: the first non-finite step comes before the epoch's last one, where it is read.
        var error = Assert.ThrowsExactly<BootMaeTrainingException>(() => new BootMaePretrainer(Tiny, settings) { Hooks = hooks }.Train(FashionSource(16)));

        var first = totals.First(t => !float.IsFinite(t.Total));
        Assert.IsGreaterThan(first.Step + 1, (long)totals.Count, "read at the epoch's end, after later steps");
        StringAssert.Contains(error.Message, $"The pretraining loss became {first.Total.ToString(System.Globalization.CultureInfo.InvariantCulture)} at step {first.Step} ");
        var found = PretrainingCheckpoint.FindLatestValid(directory, Tiny, FingerprintOf(settings, 40), null);
        Assert.IsTrue(found is null || found.Value.Position.Step <= first.Step, $"a checkpoint after the non-finite step {first.Step}: {found?.Position.Step}");
    }

    [TestMethod]
    public void DamagedCheckpointIsSkippedForTheOlderOne()
    {
        var directory = TempDirectory();
        var settings = Settings(epochs: 2);
        settings.CheckpointDirectory = directory;
        using (new BootMaePretrainer(Tiny, settings).Train(FashionSource(4)))
        {
        }

        var newest = Path.Combine(directory, "step-00000006", "student.bin");
        var bytes = File.ReadAllBytes(newest);
        bytes[^1] ^= 1;
        File.WriteAllBytes(newest, bytes);
        var log = new List<string>();

        var found = PretrainingCheckpoint.FindLatestValid(directory, Tiny, FingerprintOf(settings, 6), log.Add);

        Assert.IsNotNull(found);
        Assert.AreEqual(3, found.Value.Position.Step);
        Assert.IsTrue(log.Any(l => l.Contains("SHA-256", StringComparison.Ordinal)));
    }

    [TestMethod]
    public void TrainingDoesNotLeakTensors()
    {
        // Live tensors after a run must not grow with the number of steps: every step's temporaries are freed.
        long LiveAfter(int epochs)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
            var before = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
            using (new BootMaePretrainer(Tiny, Settings(epochs)).Train(FashionSource(4)))
            {
            }

            return DisposeScopeManager.Statistics.ThreadTotalLiveCount - before;
        }

        long shortRun = LiveAfter(1);
        long longRun = LiveAfter(4);

        Assert.AreEqual(shortRun, longRun, "tensors left alive after 3 vs 12 steps");
    }

    [TestMethod]
    public void FrozenTeacherAndTeacherFractionRun()
    {
        using var frozen = BootMaeEncoder.CreateRandom(Tiny, seed: 2);
        var given = Weights(frozen);
        var settings = Settings(epochs: 1);
        settings.Teacher = BootMaeTeacher.Frozen;
        settings.TeacherEncoder = frozen;
        settings.TeacherFraction = 0.25;
        var metrics = new List<BootMaeTrainingMetrics>();
        var steps = new List<long>();

        // The run's own teacher, after every step (optimizer step and the EMA update, if there were one): bit-identical to the given encoder.
        var hooks = new PretrainingHooks
        {
            AfterStep = trace =>
            {
                steps.Add(trace.Step);
                Assert.IsNull(trace.EmaMomentum, "a frozen teacher gets no EMA update");
                Assert.IsNotNull(trace.Teacher);
                using var scope = NewDisposeScope();
                var teacher = trace.Teacher.Encoder.parameters().SelectMany(p => p.detach().cpu().flatten().data<float>().ToArray()).ToArray();
                CollectionAssert.AreEqual(given, teacher, $"the frozen teacher changed at step {trace.Step}");
            },
        };
        using var encoder = new BootMaePretrainer(Tiny, settings) { Hooks = hooks }.Train(FashionSource(4), metrics.Add);

        CollectionAssert.AreEqual(new long[] { 0, 1, 2 }, steps);
        CollectionAssert.AreEqual(given, Weights(frozen), "the caller's TeacherEncoder is untouched");
        CollectionAssert.AreNotEqual(given, Weights(encoder), "the student trained");
        Assert.IsTrue(metrics.All(m => float.IsFinite(m.Loss) && m.FeatureLoss is >= 0));
    }

    [TestMethod]
    public void BadSettingsNameTheField()
    {
        var settings = Settings();
        settings.BatchSize = 0;

        var error = Assert.ThrowsExactly<ArgumentException>(() => new BootMaePretrainer(Tiny, settings));

        StringAssert.Contains(error.Message, "BatchSize");
    }

    [TestMethod]
    [DataRow(BootMaeMode.BootMae)]
    [DataRow(BootMaeMode.Mae)]
    public void ReconstructionPreviewIsWrittenEachEpoch(BootMaeMode mode)
    {
        var path = Path.Combine(TempDirectory(), "preview.png");
        var settings = Settings(epochs: 1);
        settings.Mode = mode;
        settings.ReconstructionPreviewPath = path;
        settings.ReconstructionPreviewCount = 3;
        var log = new List<string>();

        using (new BootMaePretrainer(Tiny, settings).Train(FashionSource(4), log: log.Add))
        {
        }

        using var bitmap = SkiaSharp.SKBitmap.Decode(path);
        Assert.IsNotNull(bitmap, "a PNG is written");
        Assert.IsGreaterThan(100, bitmap.Width);
        Assert.IsTrue(log.Any(l => l.Contains("Reconstruction preview", StringComparison.Ordinal)));
    }

    [TestMethod]
    public void MaskSamplesHaveTheConfiguredCount()
    {
        var architecture = BootMaeArchitecture.Tiny28;
        foreach (var masking in new[] { BootMaeMasking.Random, BootMaeMasking.Block, BootMaeMasking.BlockFill })
        {
            var masks = BootMaeMasks.Sample(architecture, masking, count: 5, seed: 3);

            Assert.HasCount(5, masks);
            Assert.IsTrue(masks.All(m => m.Length == 49 && m.Count(x => x) == 37), $"{masking}: 37 of 49 patches masked");
        }
    }

    private static string FingerprintOf(BootMaePretrainerSettings s, long totalSteps) => s.Fingerprint(totalSteps);
}
