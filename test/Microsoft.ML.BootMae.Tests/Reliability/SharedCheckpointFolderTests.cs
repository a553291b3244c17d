using System.Text.Json.Nodes;
using Microsoft.ML.BootMae.Training;
using Microsoft.VisualStudio.TestTools.UnitTesting;

namespace Microsoft.ML.BootMae.Tests.Reliability;

/// <summary>Issue 10, item 2: a run prunes only its own checkpoints; foreign and damaged ones are left alone.</summary>
[TestClass]
public sealed class SharedCheckpointFolderTests
{
    private const int Count = 16;

    private static readonly BootMaeArchitecture Tiny = new()
    {
        ImageSize = 28, PatchSize = 7, Channels = 1, EmbedDim = 32, Depth = 2, Heads = 2,
        RegressorDim = 16, RegressorHeads = 2, PredictorHeads = 2, DecoderDepth = 1,
    };

    private static InMemoryImageSource Source()
    {
        var random = new Random(4);
        var pixels = new float[Count * 28 * 28];
        for (int i = 0; i < pixels.Length; i++)
        {
            pixels[i] = (float)random.NextDouble();
        }

        return new InMemoryImageSource(pixels, Enumerable.Range(0, Count).Select(i => i % 2).ToArray(), Count, 1, 28, seed: 1, shuffle: false);
    }

    private static BootMaePretrainerSettings Pretraining(string directory, int seed, long? maxSteps, int keep) => new()
    {
        MaxEpochs = 2, MaxSteps = maxSteps, BatchSize = 4, Seed = seed, Device = BootMaeDevice.Cpu, Precision = BootMaePrecision.Float32,
        LogEveryNSteps = 1000, CheckpointDirectory = directory, CheckpointEveryNSteps = 1, CheckpointsToKeep = keep,
    };

    private static string[] Checkpoints(string directory)
        => Directory.GetDirectories(directory).Select(Path.GetFileName).OfType<string>().Order(StringComparer.Ordinal).ToArray();

    [TestMethod]
    public void SecondRunKeepsItsOwnAndLeavesTheFirstRunsAlone()
    {
        var directory = Path.Combine(Path.GetTempPath(), "bootmae-shared-" + Guid.NewGuid().ToString("N"));
        try
        {
            // Run A: 8 pretraining steps (all kept), then a fine-tuning run writing steps 1..2 into the same folder.
            using (var a = new BootMaePretrainer(Tiny, Pretraining(directory, seed: 1, maxSteps: null, keep: 10)).Train(Source()))
            {
                var fineTune = new FineTuneSettings { MaxEpochs = 1, MaxSteps = 2, BatchSize = 4, Seed = 1, Device = BootMaeDevice.Cpu, LogEveryNSteps = 0,
                    CheckpointDirectory = directory, CheckpointEveryNSteps = 1, CheckpointsToKeep = 2 };
                using var classifier = ImageClassifierEngine.Train(a, 2, Source(), null, fineTune, null, null, CancellationToken.None);
            }

            var before = Checkpoints(directory);
            Assert.HasCount(10, before, string.Join(", ", before));

            // Run B (another seed, so another fingerprint): 3 steps, keep 2.
            using (new BootMaePretrainer(Tiny, Pretraining(directory, seed: 2, maxSteps: 3, keep: 2)).Train(Source()))
            {
            }

            var after = Checkpoints(directory);
            CollectionAssert.IsSubsetOf(before, after, "run B deleted a checkpoint of run A");
            var mine = after.Except(before).ToArray();
            Assert.HasCount(2, mine, string.Join(", ", after));
            Assert.IsTrue(mine.Any(n => n.StartsWith("step-00000003", StringComparison.Ordinal)) && mine.Any(n => n.StartsWith("step-00000002", StringComparison.Ordinal)), string.Join(", ", mine));

            // B resumes from its own newest checkpoint.
            var log = new List<string>();
            var resume = Pretraining(directory, seed: 2, maxSteps: 3, keep: 2);
            resume.ResumeFromCheckpoint = true;
            using (new BootMaePretrainer(Tiny, resume).Train(Source(), log: log.Add))
            {
            }

            var newest = mine.Single(n => n.StartsWith("step-00000003", StringComparison.Ordinal));
            Assert.IsTrue(log.Any(l => l.StartsWith("Resumed from", StringComparison.Ordinal) && l.Contains(newest, StringComparison.Ordinal)), string.Join("\n", log));

            // A damaged newest manifest (null hashes) and one naming a file outside its folder are skipped with a message.
            var newestManifest = Path.Combine(directory, newest, "manifest.json");
            var json = JsonNode.Parse(File.ReadAllText(newestManifest))!.AsObject();
            json["Sha256"] = null;
            File.WriteAllText(newestManifest, json.ToJsonString());
            var older = mine.Single(n => n.StartsWith("step-00000002", StringComparison.Ordinal));
            var olderManifest = Path.Combine(directory, older, "manifest.json");
            var olderJson = JsonNode.Parse(File.ReadAllText(olderManifest))!.AsObject();
            olderJson["Sha256"]!.AsObject()["../escape.bin"] = "00";
            File.WriteAllText(olderManifest, olderJson.ToJsonString());

            log.Clear();
            using (new BootMaePretrainer(Tiny, resume).Train(Source(), log: log.Add))
            {
            }

            Assert.IsTrue(log.Any(l => l.Contains(newest, StringComparison.Ordinal) && l.Contains("'Sha256'", StringComparison.Ordinal)), string.Join("\n", log));
            Assert.IsTrue(log.Any(l => l.Contains(older, StringComparison.Ordinal) && l.Contains("field 'Sha256'", StringComparison.Ordinal) && l.Contains("../escape.bin", StringComparison.Ordinal)), string.Join("\n", log));
            Assert.IsFalse(log.Any(l => l.StartsWith("Resumed from", StringComparison.Ordinal)), string.Join("\n", log));
            Assert.IsTrue(Directory.Exists(Path.Combine(directory, newest)) && Directory.Exists(Path.Combine(directory, older)), "damaged checkpoints must not be deleted");
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }
}
