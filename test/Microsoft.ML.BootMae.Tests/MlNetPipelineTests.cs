using Microsoft.ML.Data;
using Microsoft.VisualStudio.TestTools.UnitTesting;

namespace Microsoft.ML.BootMae.Tests;

/// <summary>End-to-end ML.NET pipelines on a few real Fashion-MNIST PNGs with a tiny network.</summary>
[TestClass]
[DoNotParallelize]
public sealed class MlNetPipelineTests
{
    private static readonly BootMaeArchitecture Tiny = PretrainerTests.Tiny;
    private static string _folder = string.Empty;
    private static FashionMnistFiles? _files;

    [ClassInitialize]
    public static void Materialize(TestContext context)
    {
        _ = context;
        _folder = Path.Combine(Path.GetTempPath(), $"bootmae-mlnet-fmnist-{Guid.NewGuid():N}");
        _files = FashionMnistSample.Materialize(_folder, trainPerClass: 3, testPerClass: 2);
    }

    [ClassCleanup]
    public static void Cleanup()
    {
        try
        {
            Directory.Delete(_folder, recursive: true);
        }
        catch (IOException)
        {
            // Best effort.
        }
    }

    private static FashionMnistFiles Files => _files!;

    private static (IDataView Train, IDataView Test) Load(MLContext ml) =>
        (ml.Data.LoadFromTextFile<TsvRow>(Files.TrainTsvPath, hasHeader: true, separatorChar: '\t'),
         ml.Data.LoadFromTextFile<TsvRow>(Files.TestTsvPath, hasHeader: true, separatorChar: '\t'));

    private static BootMaePretrainingEstimator.Options PretrainOptions(int seed = 3) => new()
    {
        Architecture = Tiny, MaxEpochs = 1, BatchSize = 10, Seed = seed, LogEveryNSteps = 1,
    };

    private static float[][] Column(IDataView data, string name) => data.GetColumn<float[]>(name).ToArray();

    [TestMethod]
    public void PretrainThenSdcaEvaluates()
    {
        var ml = new MLContext(seed: 1);
        var messages = new List<string>();
        ml.Log += (_, e) =>
        {
            lock (messages)
            {
                messages.Add(e.Message);
            }
        };
        var (train, test) = Load(ml);
        var metrics = new List<BootMaeTrainingMetrics>();
        var options = PretrainOptions();
        options.MetricsCallback = metrics.Add;
        var pipeline = ml.Transforms.Conversion.MapValueToKey("Label")
            .Append(ml.Transforms.LoadRawImageBytes("Image", Files.Directory, "ImagePath"))
            .Append(ml.Transforms.BootMaePretrain(options))
            .AppendCacheCheckpoint(ml)
            .Append(ml.MulticlassClassification.Trainers.SdcaMaximumEntropy("Label", "Features", maximumNumberOfIterations: 5));
        var model = pipeline.Fit(train);
        var result = ml.MulticlassClassification.Evaluate(model.Transform(test));
        Assert.IsTrue(result.MacroAccuracy is >= 0 and <= 1, result.MacroAccuracy.ToString());
        Assert.IsNotEmpty(metrics);
        lock (messages)
        {
            Assert.IsTrue(messages.Any(m => m.Contains("BootMaePretrain", StringComparison.Ordinal) && m.Contains("device", StringComparison.OrdinalIgnoreCase)),
                "the chosen device reaches mlContext.Log:\n" + string.Join("\n", messages.Take(20)));
        }

        (model as IDisposable)?.Dispose();
    }

    [TestMethod]
    public void ClassificationPipelineEvaluatesSavesAndLoads()
    {
        var ml = new MLContext(seed: 1);
        var (train, test) = Load(ml);
        using var encoder = BootMaeEncoder.CreateRandom(Tiny, seed: 2);
        var pipeline = ml.Transforms.Conversion.MapValueToKey("Label")
            .Append(ml.Transforms.LoadImages("Image", Files.Directory, "ImagePath"))
            .Append(ml.MulticlassClassification.Trainers.BootMaeImageClassification(new BootMaeImageClassificationTrainer.Options
            {
                Encoder = encoder, MaxEpochs = 1, BatchSize = 10, Seed = 4, ValidationSet = null,
            }))
            .Append(ml.Transforms.Conversion.MapKeyToValue("PredictedLabel"));
        using var model = pipeline.Fit(train);
        var scored = model.Transform(test);
        var metrics = ml.MulticlassClassification.Evaluate(scored);
        Assert.AreEqual(10, metrics.PerClassLogLoss.Count);
        var slotNames = default(VBuffer<ReadOnlyMemory<char>>);
        scored.Schema["Score"].GetSlotNames(ref slotNames);
        CollectionAssert.AreEquivalent(Files.ClassNames.ToArray(), slotNames.DenseValues().Select(v => v.ToString()).ToArray());
        var predicted = scored.GetColumn<string>("PredictedLabel").ToArray();
        Assert.IsTrue(predicted.All(p => Files.ClassNames.Contains(p)), string.Join(",", predicted));

        var path = Path.Combine(_folder, "classifier.zip");
        ml.Model.SaveBootMae(model, train.Schema, path);
        using var loaded = (TransformerChain<ITransformer>)ml.Model.LoadBootMae(path, out _);
        var before = Column(scored, "Score");
        var after = Column(loaded.Transform(test), "Score");
        for (int i = 0; i < before.Length; i++)
        {
            CollectionAssert.AreEqual(before[i], after[i], $"row {i}");
        }

        using var engine = ml.Model.CreatePredictionEngine<TsvRow, Prediction>(loaded, new PredictionEngineOptions { OwnsTransformer = false });
        var first = test.GetColumn<string>("ImagePath").First();
        var prediction = engine.Predict(new TsvRow { ImagePath = first });
        Assert.AreEqual(predicted[0], prediction.PredictedLabel);
        Assert.HasCount(10, prediction.Score);
    }

    [TestMethod]
    public void LinearProbeOnRawBytesTrainsTheHeadOnly()
    {
        var ml = new MLContext(seed: 1);
        var (train, test) = Load(ml);
        using var encoder = BootMaeEncoder.CreateRandom(Tiny, seed: 2);
        var before = encoder.Embed(new float[28 * 28], 1, BootMaePooling.Mean, 1, BootMaePrecision.Float32);
        var lines = new List<string>();

        // A validation set is not passed through the pipeline: prepare it with the same steps (as for ML.NET's own trainers).
        var prepare = ml.Transforms.Conversion.MapValueToKey("Label")
            .Append(ml.Transforms.LoadRawImageBytes("Image", Files.Directory, "ImagePath"))
            .Fit(train);
        var trainer = ml.MulticlassClassification.Trainers.BootMaeImageClassification(new BootMaeImageClassificationTrainer.Options
        {
            Encoder = encoder, FreezeEncoder = true, SourceBlock = 0, MaxEpochs = 2, BatchSize = 10, Seed = 4,
            ValidationSet = prepare.Transform(test), EarlyStoppingPatience = 1, LogCallback = lines.Add,
        });
        using var model = trainer.Fit(prepare.Transform(train));
        var metrics = ml.MulticlassClassification.Evaluate(model.Transform(prepare.Transform(test)));
        Assert.IsTrue(metrics.MicroAccuracy is >= 0 and <= 1);
        Assert.IsTrue(lines.Any(l => l.Contains("Linear probe", StringComparison.Ordinal)), string.Join("\n", lines));
        CollectionAssert.AreEqual(before, encoder.Embed(new float[28 * 28], 1, BootMaePooling.Mean, 1, BootMaePrecision.Float32), "the caller's encoder is untouched");
    }

    [TestMethod]
    public void PretrainWritesTheReconstructionPreview()
    {
        var ml = new MLContext(seed: 1);
        var (train, _) = Load(ml);
        var path = Path.Combine(Path.GetTempPath(), "bootmae-preview-" + Guid.NewGuid().ToString("N") + ".png");
        try
        {
            var options = PretrainOptions();
            options.ReconstructionPreviewPath = path;
            options.ReconstructionPreviewCount = 2;
            using var model = ml.Transforms.LoadRawImageBytes("Image", Files.Directory, "ImagePath").Append(ml.Transforms.BootMaePretrain(options)).Fit(train);
            Assert.IsTrue(File.Exists(path), "BootMaePretrain did not pass ReconstructionPreviewPath on.");
            CollectionAssert.AreEqual(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G' }, File.ReadAllBytes(path)[..4]);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [TestMethod]
    public void PretrainingIsDeterministicAndUsesTheMlContextSeed()
    {
        float[][] Run(int? seed, int contextSeed, List<string> lines)
        {
            var ml = new MLContext(seed: contextSeed);
            var (train, _) = Load(ml);
            var options = PretrainOptions();
            options.Seed = seed;
            options.MaxSteps = 2;
            options.LogCallback = lines.Add;
            using var model = ml.Transforms.LoadRawImageBytes("Image", Files.Directory, "ImagePath").Append(ml.Transforms.BootMaePretrain(options)).Fit(train);
            return Column(model.Transform(train), "Features");
        }

        var lines = new List<string>();
        var first = Run(null, 21, lines);
        var second = Run(null, 21, new List<string>());
        Assert.IsTrue(lines.Any(l => l.Contains("seed 21", StringComparison.Ordinal)), string.Join("\n", lines));
        for (int i = 0; i < first.Length; i++)
        {
            CollectionAssert.AreEqual(first[i], second[i], $"row {i}");
        }

        var other = Run(22, 21, new List<string>());
        Assert.IsFalse(first[0].SequenceEqual(other[0]), "another seed gives another encoder");
    }

    [TestMethod]
    public void FineTuningIsDeterministic()
    {
        // Same seed, same data → bit-identical scores, with augmentation and multi-threaded decoding on.
        float[][] Run(int seed)
        {
            var ml = new MLContext(seed: 1);
            var (train, test) = Load(ml);
            using var encoder = BootMaeEncoder.CreateRandom(Tiny, seed: 2);
            var pipeline = ml.Transforms.Conversion.MapValueToKey("Label")
                .Append(ml.Transforms.LoadRawImageBytes("Image", Files.Directory, "ImagePath"))
                .Append(ml.MulticlassClassification.Trainers.BootMaeImageClassification(new BootMaeImageClassificationTrainer.Options
                {
                    Encoder = encoder, MaxEpochs = 3, BatchSize = 8, Seed = seed, Augment = true,
                }));
            using var model = pipeline.Fit(train);
            return Column(model.Transform(test), "Score");
        }

        var first = Run(5);
        var second = Run(5);
        for (int i = 0; i < first.Length; i++)
        {
            CollectionAssert.AreEqual(first[i], second[i], $"row {i}");
        }

        Assert.IsFalse(first[0].SequenceEqual(Run(6)[0]), "another seed gives another model");
    }

    [TestMethod]
    public void PretrainingSwitchesReachTheEngine()
    {
        var ml = new MLContext(seed: 1);
        var (train, _) = Load(ml);
        var metrics = new List<BootMaeTrainingMetrics>();
        var options = PretrainOptions();
        options.MaxSteps = 2;
        options.Target = BootMaeTarget.Pixel;
        options.Masking = BootMaeMasking.Random;
        options.InjectRegressor = false;
        options.MetricsCallback = metrics.Add;

        using var model = ml.Transforms.LoadRawImageBytes("Image", Files.Directory, "ImagePath").Append(ml.Transforms.BootMaePretrain(options)).Fit(train);

        Assert.IsNotEmpty(metrics);
        Assert.IsTrue(metrics.All(m => m.FeatureLoss is null && m.EmaMomentum is null && m.PixelLoss is > 0), "a pixel-only run has no teacher and no feature loss");

        var bad = PretrainOptions();
        bad.TeacherFraction = 0;
        var error = Assert.ThrowsExactly<ArgumentException>(() => ml.Transforms.BootMaePretrain(bad));
        StringAssert.Contains(error.Message, "TeacherFraction");
    }

    [TestMethod]
    public void CancellationThrowsOrReturnsTheModel()
    {
        var ml = new MLContext(seed: 1);
        var (train, _) = Load(ml);
        using var cts = new CancellationTokenSource();
        var options = PretrainOptions();
        options.MaxEpochs = 50;
        options.CancellationToken = cts.Token;
        options.MetricsCallback = _ => cts.Cancel();
        var pipeline = ml.Transforms.LoadRawImageBytes("Image", Files.Directory, "ImagePath").Append(ml.Transforms.BootMaePretrain(options));
        Assert.Throws<OperationCanceledException>(() => pipeline.Fit(train));

        using var cts2 = new CancellationTokenSource();
        var keep = PretrainOptions();
        keep.MaxEpochs = 50;
        keep.CancellationToken = cts2.Token;
        keep.MetricsCallback = _ => cts2.Cancel();
        keep.ReturnModelOnCancellation = true;
        using var model = ml.Transforms.LoadRawImageBytes("Image", Files.Directory, "ImagePath").Append(ml.Transforms.BootMaePretrain(keep)).Fit(train);
        Assert.AreEqual(Tiny, model.LastTransformer.Encoder.Architecture);
    }

    [TestMethod]
    public void CheckpointAndResumeGoThroughOptions()
    {
        var ml = new MLContext(seed: 1);
        var (train, _) = Load(ml);
        var directory = Path.Combine(_folder, "checkpoints");
        var first = PretrainOptions();
        first.MaxEpochs = 2;
        first.MaxSteps = 3;
        first.CheckpointDirectory = directory;
        first.CheckpointEveryNSteps = 1;
        using (ml.Transforms.LoadRawImageBytes("Image", Files.Directory, "ImagePath").Append(ml.Transforms.BootMaePretrain(first)).Fit(train))
        {
        }

        Assert.IsNotEmpty(Directory.GetFileSystemEntries(directory));
        var lines = new List<string>();
        var resumed = PretrainOptions();
        resumed.MaxEpochs = 2;
        resumed.MaxSteps = 3;
        resumed.CheckpointDirectory = directory;
        resumed.CheckpointEveryNSteps = 1;
        resumed.ResumeFromCheckpoint = true;
        resumed.LogCallback = lines.Add;
        using (ml.Transforms.LoadRawImageBytes("Image", Files.Directory, "ImagePath").Append(ml.Transforms.BootMaePretrain(resumed)).Fit(train))
        {
        }

        Assert.IsTrue(lines.Any(l => l.StartsWith("Resumed", StringComparison.Ordinal)), string.Join("\n", lines));
    }

    [TestMethod]
    public void PretrainedEncoderFeedsFeaturizeAndSurvivesSaveLoad()
    {
        var ml = new MLContext(seed: 1);
        var (train, test) = Load(ml);
        var options = PretrainOptions();
        options.MaxSteps = 1;
        using var pretrained = ml.Transforms.LoadRawImageBytes("Image", Files.Directory, "ImagePath").Append(ml.Transforms.BootMaePretrain(options)).Fit(train);
        var encoder = pretrained.LastTransformer.Encoder;
        using var featurizer = ml.Transforms.LoadImages("Image", Files.Directory, "ImagePath").Append(ml.Transforms.BootMaeFeaturize(encoder)).Fit(train);
        var viaPretrain = Column(pretrained.Transform(test), "Features");
        var viaFeaturize = Column(featurizer.Transform(test), "Features");
        for (int i = 0; i < viaPretrain.Length; i++)
        {
            CollectionAssert.AreEqual(viaPretrain[i], viaFeaturize[i], $"row {i}: raw bytes and MLImage decode the same PNG identically");
        }

        using var stream = new MemoryStream();
        ml.Model.SaveBootMae(pretrained, train.Schema, stream);
        stream.Position = 0;
        using var loaded = (TransformerChain<ITransformer>)ml.Model.LoadBootMae(stream, out _);
        CollectionAssert.AreEqual(viaPretrain[0], Column(loaded.Transform(test), "Features")[0]);
    }

    /// <summary>A row of Fashion-MNIST's TSV files.</summary>
    public sealed class TsvRow
    {
        [LoadColumn(0)]
        public string ImagePath { get; set; } = string.Empty;

        [LoadColumn(1)]
        public string Label { get; set; } = string.Empty;
    }

    /// <summary>Classifier output after MapKeyToValue.</summary>
    public sealed class Prediction
    {
        public string PredictedLabel { get; set; } = string.Empty;

        public float[] Score { get; set; } = Array.Empty<float>();
    }
}
