using Microsoft.ML.BootMae.Training;
using Microsoft.VisualStudio.TestTools.UnitTesting;

namespace Microsoft.ML.BootMae.Tests.Reliability;

/// <summary>Issue 10, item 3: a non-finite fine-tuning loss stops the run, names where, and saves no NaN weights.</summary>
[TestClass]
public sealed class FineTuneNanGuardTests
{
    private const int Count = 16;

    private static readonly BootMaeArchitecture Tiny = new()
    {
        ImageSize = 28, PatchSize = 7, Channels = 1, EmbedDim = 32, Depth = 2, Heads = 2,
        RegressorDim = 16, RegressorHeads = 2, PredictorHeads = 2, DecoderDepth = 1,
    };

    private static float[] Pixels(int? nanImage)
    {
        var random = new Random(4);
        var pixels = new float[Count * 28 * 28];
        for (int i = 0; i < pixels.Length; i++)
        {
            pixels[i] = (float)random.NextDouble();
        }

        if (nanImage is { } row)
        {
            pixels[(row * 28 * 28) + 100] = float.NaN;
        }

        return pixels;
    }

    private static InMemoryImageSource Source(float[] pixels)
        => new(pixels, Enumerable.Range(0, Count).Select(i => i % 2).ToArray(), Count, 1, 28, seed: 1, shuffle: false);

    private static FineTuneSettings Settings(string directory) => new()
    {
        MaxEpochs = 2, BatchSize = 4, Seed = 1, Device = BootMaeDevice.Cpu, LogEveryNSteps = 0,
        CheckpointDirectory = directory, CheckpointEveryNSteps = 1, CheckpointsToKeep = 2,
    };

    [TestMethod]
    public void TheBestEpochSnapshotIsFreedWhenTrainingThrows()
    {
        using var encoder = BootMaeEncoder.CreateRandom(Tiny, seed: 1);
        var pixels = Pixels(nanImage: null);

        // Tensors still alive after a run that throws in epoch 1, when epoch 0 has left a best-epoch snapshot (or not).
        long LiveAfterAThrowInEpochOne(bool returnBestModel)
        {
            var settings = new FineTuneSettings { MaxEpochs = 3, BatchSize = 4, Seed = 1, Device = BootMaeDevice.Cpu, LogEveryNSteps = 1, ReturnBestModel = returnBestModel };
            bool epochZeroEnded = false;
            void FailInTheSecondEpoch(BootMaeTrainingMetrics m)
            {
                epochZeroEnded |= m.IsEpochEnd && m.Epoch == 0;
                if (m.Epoch == 1 && !m.IsEpochEnd)
                {
                    throw new InvalidOperationException("stop in epoch 1");
                }
            }

            long before = TorchSharp.DisposeScopeManager.Statistics.ThreadTotalLiveCount;
            var ex = Assert.ThrowsExactly<InvalidOperationException>(() =>
                ImageClassifierEngine.Train(encoder, 2, Source(pixels), null, settings, FailInTheSecondEpoch, null, CancellationToken.None));
            Assert.AreEqual("stop in epoch 1", ex.Message);
            Assert.IsTrue(epochZeroEnded);
            return TorchSharp.DisposeScopeManager.Statistics.ThreadTotalLiveCount - before;
        }

        long without = LiveAfterAThrowInEpochOne(returnBestModel: false);
        long with = LiveAfterAThrowInEpochOne(returnBestModel: true);
        // The snapshot (a CPU copy of every weight: dozens of tensors here) must not outlive the run; before the fix it did.
        Assert.AreEqual(without, with, "tensors of the best-epoch snapshot left alive by a run that threw");
    }

    [TestMethod]
    public void NanPixelStopsWithStepAndKeepsTheGoodCheckpoint()
    {
        var directory = Path.Combine(Path.GetTempPath(), "bootmae-nan-" + Guid.NewGuid().ToString("N"));
        try
        {
            using var encoder = BootMaeEncoder.CreateRandom(Tiny, seed: 1);

            // Image 9 is in the third batch of 4 (step 2, 0-based) of epoch 0.
            var ex = Assert.ThrowsExactly<BootMaeTrainingException>(() =>
                ImageClassifierEngine.Train(encoder, 2, Source(Pixels(nanImage: 9)), null, Settings(directory), null, null, CancellationToken.None));

            StringAssert.Contains(ex.Message, "NaN at step 2 (epoch 0, batch 2 of the epoch: images 8..11");
            StringAssert.Contains(ex.Message, "The last good checkpoint is '" + Path.Combine(directory, "step-00000002") + "'");
            CollectionAssert.AreEquivalent(new[] { "step-00000001", "step-00000002" }, Directory.GetDirectories(directory).Select(Path.GetFileName).ToArray());

            // The kept checkpoint holds finite weights: resuming from it on clean images trains to the end.
            var resume = Settings(directory);
            resume.ResumeFromCheckpoint = true;
            var clean = Pixels(nanImage: null);
            var log = new List<string>();
            using var classifier = ImageClassifierEngine.Train(encoder, 2, Source(clean), null, resume, null, log.Add, CancellationToken.None);
            Assert.IsTrue(log.Any(l => l.Contains("step-00000002", StringComparison.Ordinal) && l.StartsWith("Resumed from", StringComparison.Ordinal)), string.Join("\n", log));
            Assert.IsTrue(classifier.PredictScores(clean, Count).All(float.IsFinite));
        }
        finally
        {
            if (Directory.Exists(directory))
            {
                Directory.Delete(directory, recursive: true);
            }
        }
    }
}
