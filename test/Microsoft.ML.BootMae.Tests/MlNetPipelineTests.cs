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
        // 20 test images of 10 classes: chance is 0.1. Measured 0.35; an encoder whose features carry nothing (its
        // weights zeroed, or the training labels shuffled) scored 0.10.
        Assert.IsGreaterThanOrEqualTo(0.25, result.MacroAccuracy, $"macro accuracy {result.MacroAccuracy}");
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
        var reports = new List<BootMaeTrainingMetrics>();

        // A validation set is not passed through the pipeline: prepare it with the same steps (as for ML.NET's own trainers).
        var prepare = ml.Transforms.Conversion.MapValueToKey("Label")
            .Append(ml.Transforms.LoadRawImageBytes("Image", Files.Directory, "ImagePath"))
            .Fit(train);
        var trainer = ml.MulticlassClassification.Trainers.BootMaeImageClassification(new BootMaeImageClassificationTrainer.Options
        {
            Encoder = encoder, FreezeEncoder = true, SourceBlock = 0, MaxEpochs = 2, BatchSize = 10, Seed = 4,
            ValidationSet = prepare.Transform(test), EarlyStoppingPatience = 1, LogCallback = lines.Add, MetricsCallback = reports.Add,
        });
        using var model = trainer.Fit(prepare.Transform(train));
        // A probe on a random encoder's block 0 with 30 images cannot beat chance on 20 test images (measured 0.15, as with
        // shuffled labels), so what is checked is that the head learns: the training loss falls from the uniform
        // prediction's ln 10 = 2.303 (measured 2.3020 → 2.2867; with the head's learning rate forced to 0 it stays flat).
        var trainLoss = reports.Where(r => r.Dataset == BootMaeDataset.Train && r.IsEpochEnd).Select(r => r.Loss).ToList();
        Assert.HasCount(2, trainLoss, string.Join("\n", reports));
        Assert.IsLessThan(trainLoss[0] - 0.005f, trainLoss[1], $"training loss by epoch: {string.Join(", ", trainLoss)}");
        Assert.HasCount(20, model.Transform(prepare.Transform(test)).GetColumn<float[]>("Score").ToArray());
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
        // Each switch set on the ML.NET Options is observed in the running engine: the network's settings, its modules, the
        // masks drawn, and what each step passed to the teacher and the loss.
        var ml = new MLContext(seed: 1);
        var (train, _) = Load(ml);
        var pixelOnly = PretrainOptions();
        pixelOnly.Target = BootMaeTarget.Pixel;
        pixelOnly.Masking = BootMaeMasking.Random;
        pixelOnly.MaskRatio = 0.5;
        pixelOnly.MaskJitter = 0;
        pixelOnly.InjectRegressor = false;
        pixelOnly.WeightMask = false;
        pixelOnly.NormPixTarget = false;
        pixelOnly.PixelTargetEpsilon = 1e-3;
        var steps = Trace(ml, train, pixelOnly);
        Assert.HasCount(3, steps);
        foreach (var step in steps)
        {
            Assert.IsNull(step.Feature, "a pixel-only run has no feature loss");
            Assert.IsFalse(step.HasTeacher, "and no teacher");
            Assert.AreEqual(8, step.NumMasked, "MaskRatio 0.5 of 16 patches");
            Assert.IsFalse(step.RegressorCrossAttention, "InjectRegressor = false: no cross-attention in the pixel regressor");
            Assert.IsTrue(step.PredictorCrossAttention);
            Assert.AreEqual(BootMaeMasking.Random, step.Model.Masking);
            Assert.AreEqual(0, step.Model.MaskJitter);
            Assert.IsFalse(step.Model.WeightMask);
            Assert.IsFalse(step.Model.NormPixTarget);
            Assert.AreEqual(1e-3, step.Model.PixelTargetEpsilon);
        }

        var both = PretrainOptions();
        both.InjectPredictor = false;
        both.TeacherFraction = 0.5;
        both.FeatureTargetNormalization = BootMaeFeatureTargetNormalization.LayerNorm;
        both.FeatureLossWeight = 2;
        both.FeatureLossRampFraction = 1.0;
        both.EmaMomentumStart = 0.9;
        both.EmaMomentumMid = 0.95;
        both.EmaMomentumEnd = 0.97;
        both.EmaRamp1Fraction = 0.5;
        both.EmaRamp2EndFraction = 1.0;
        steps = Trace(ml, train, both);
        // 3 steps: λ ramps over all 3 to 2; the momentum ramps 0.9 → 0.95 over steps 0–1 and 0.95 → 0.97 from step 2 on.
        // The default fractions would give λ 2, 2, 2 and momenta 0.95, 0.96, 0.97.
        CollectionAssert.AreEqual(new[] { Math.Round(2.0 / 3, 12), Math.Round(4.0 / 3, 12), 2.0 }, steps.Select(s => Math.Round(s.FeatureWeight, 12)).ToArray(), "FeatureLossWeight and its ramp");
        CollectionAssert.AreEqual(new double?[] { 0.9, 0.925, 0.95 }, steps.Select(s => s.Ema is { } m ? Math.Round(m, 12) : (double?)null).ToArray(), "EMA momenta and ramps");
        Assert.IsTrue(steps.All(s => s.HasTeacher && s.Feature is > 0 && s.NumMasked == 12 && s.RegressorCrossAttention && !s.PredictorCrossAttention));
        Assert.IsTrue(steps.All(s => s.Model.TeacherFraction == 0.5 && s.Model.FeatureTargetNormalization == BootMaeFeatureTargetNormalization.LayerNorm));

        var mae = PretrainOptions();
        mae.Mode = BootMaeMode.Mae;
        mae.MaeDecoderDepth = 2;
        steps = Trace(ml, train, mae);
        Assert.IsTrue(steps.All(s => s.MaeDecoderDepth == 2 && !s.HasTeacher), "MAE mode with a 2-block decoder");

        var bad = PretrainOptions();
        bad.TeacherFraction = 0;
        var error = Assert.ThrowsExactly<ArgumentException>(() => ml.Transforms.BootMaePretrain(bad));
        StringAssert.Contains(error.Message, "TeacherFraction");
    }

    private static List<StepSeen> Trace(MLContext ml, IDataView train, BootMaePretrainingEstimator.Options options)
    {
        var steps = new List<StepSeen>();
        var estimator = ml.Transforms.BootMaePretrain(options);
        estimator.Hooks = new Training.PretrainingHooks
        {
            AfterStep = t => steps.Add(new StepSeen(t.Feature, t.Teacher is not null, t.FeatureWeight, t.EmaMomentum, t.NumMasked, t.Network.Settings,
                t.Network.Regressor?.Blocks.Any(b => b.HasCrossAttention) ?? false, t.Network.Predictor?.Blocks.Any(b => b.HasCrossAttention) ?? false,
                t.Network.Decoder?.Depth)),
        };
        using var model = ml.Transforms.LoadRawImageBytes("Image", Files.Directory, "ImagePath").Append(estimator).Fit(train);
        return steps;
    }

    private sealed record StepSeen(float? Feature, bool HasTeacher, double FeatureWeight, double? Ema, int NumMasked, BootMaePretrainerSettings Model,
        bool RegressorCrossAttention, bool PredictorCrossAttention, int? MaeDecoderDepth);

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
