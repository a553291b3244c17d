using Microsoft.ML.Data;

namespace Microsoft.ML.BootMae.Tests.DocSnippets;

#region snippet:tutorial-types
/// <summary>A row of train.tsv / test.tsv written by FashionMnistSample.Materialize.</summary>
public sealed class FashionRow
{
    [LoadColumn(0)]
    public string ImagePath { get; set; } = string.Empty;

    [LoadColumn(1)]
    public string Label { get; set; } = string.Empty;
}

/// <summary>What the saved classifier returns for one image.</summary>
public sealed class FashionPrediction
{
    public string PredictedLabel { get; set; } = string.Empty;

    public float[] Score { get; set; } = Array.Empty<float>();
}
#endregion

// The README quick start and docs/tutorial.md, run by DocSnippetRunTests. Code outside the regions only shrinks the
// tutorial's settings for the test.
internal static class MlNetSnippets
{
    public static float QuickStart()
    {
        #region snippet:readme-quickstart
        var files = FashionMnistSample.Materialize(Path.Combine(Path.GetTempPath(), "bootmae-quickstart"), trainPerClass: 10, testPerClass: 5);
        var ml = new MLContext(seed: 1);
        var train = ml.Data.LoadFromTextFile<FashionRow>(files.TrainTsvPath, hasHeader: true, separatorChar: '\t');
        var test = ml.Data.LoadFromTextFile<FashionRow>(files.TestTsvPath, hasHeader: true, separatorChar: '\t');

        var pipeline = ml.Transforms.Conversion.MapValueToKey("Label")
            .Append(ml.Transforms.LoadRawImageBytes("Image", files.Directory, "ImagePath"))
            .Append(ml.Transforms.BootMaePretrain(architecture: BootMaeArchitecture.Tiny28, maxEpochs: 1, batchSize: 50))
            .AppendCacheCheckpoint(ml)
            .Append(ml.MulticlassClassification.Trainers.SdcaMaximumEntropy("Label", "Features"));
        using var model = pipeline.Fit(train);

        var metrics = ml.MulticlassClassification.Evaluate(model.Transform(test));
        Console.WriteLine($"Macro accuracy: {metrics.MacroAccuracy:P1}");
        ml.Model.SaveBootMae(model, train.Schema, Path.Combine(files.Directory, "model.zip"));
        #endregion
        return (float)metrics.MacroAccuracy;
    }

    public static (double Features, double FineTuned, double Probe, string Predicted) Tutorial(bool tiny)
    {
        #region snippet:tutorial-settings
        var workDir = Path.Combine(Path.GetTempPath(), "bootmae-tutorial");
        var architecture = BootMaeArchitecture.Tiny28;   // 28×28 grey, patch 4 → 49 patches, D 192, 12 blocks
        int trainPerClass = 1000, testPerClass = 200, pretrainEpochs = 50, fineTuneEpochs = 10;
        #endregion
        if (tiny)
        {
            workDir = Path.Combine(Path.GetTempPath(), "bootmae-doc-" + Guid.NewGuid().ToString("N"));
            architecture = DocSnippetRunTests.TinyArchitecture;
            (trainPerClass, testPerClass, pretrainEpochs, fineTuneEpochs) = (4, 2, 1, 1);
        }

        #region snippet:tutorial-data
        var files = FashionMnistSample.Materialize(workDir, trainPerClass, testPerClass);
        var ml = new MLContext(seed: 1);
        var train = ml.Data.LoadFromTextFile<FashionRow>(files.TrainTsvPath, hasHeader: true, separatorChar: '\t');
        var test = ml.Data.LoadFromTextFile<FashionRow>(files.TestTsvPath, hasHeader: true, separatorChar: '\t');

        // Label text → key, image file → bytes. Fitted once on the training data, applied to both sets.
        var prepare = ml.Transforms.Conversion.MapValueToKey("Label")
            .Append(ml.Transforms.LoadRawImageBytes("Image", files.Directory, "ImagePath"))
            .Fit(train);
        var trainImages = prepare.Transform(train);
        var testImages = prepare.Transform(test);
        #endregion

        #region snippet:tutorial-pretrain
        var pretrain = ml.Transforms.BootMaePretrain(new BootMaePretrainingEstimator.Options
        {
            Architecture = architecture,
            MaxEpochs = pretrainEpochs,
            BatchSize = 128,
            CheckpointDirectory = Path.Combine(workDir, "checkpoints"),
            ResumeFromCheckpoint = true,
            MetricsCallback = m => { if (m.IsEpochEnd) Console.WriteLine(m); },
        });
        using var pretrained = pretrain.Fit(trainImages);     // labels are not used
        BootMaeEncoder encoder = pretrained.Encoder;           // owned by `pretrained`
        encoder.Save(Path.Combine(workDir, "fashion.bootmae")); // reload later with BootMaeEncoder.Load
        #endregion

        #region snippet:tutorial-featurize
        var featurePipeline = ml.Transforms.BootMaeFeaturize(encoder, outputColumnName: "Features")
            .AppendCacheCheckpoint(ml)   // SDCA makes many passes; compute the features once
            .Append(ml.MulticlassClassification.Trainers.SdcaMaximumEntropy("Label", "Features"));
        using var featureModel = featurePipeline.Fit(trainImages);
        var featureMetrics = ml.MulticlassClassification.Evaluate(featureModel.Transform(testImages));
        Console.WriteLine($"BootMAE features + SDCA: macro accuracy {featureMetrics.MacroAccuracy:P1}");
        #endregion

        #region snippet:tutorial-finetune
        var split = ml.Data.TrainTestSplit(trainImages, testFraction: 0.1, seed: 1);
        var fineTune = ml.MulticlassClassification.Trainers.BootMaeImageClassification(new BootMaeImageClassificationTrainer.Options
        {
            Encoder = encoder,             // copied; `encoder` is not changed
            MaxEpochs = fineTuneEpochs,
            BatchSize = 64,
            ValidationSet = split.TestSet, // per-epoch validation; the best epoch is kept
            MetricsCallback = m => { if (m.IsEpochEnd) Console.WriteLine(m); },
        });
        using var classifier = fineTune.Fit(split.TrainSet);
        var fineTuneMetrics = ml.MulticlassClassification.Evaluate(classifier.Transform(testImages));
        Console.WriteLine($"Fine-tuned: macro accuracy {fineTuneMetrics.MacroAccuracy:P1}");
        #endregion

        #region snippet:tutorial-probe
        var probe = ml.MulticlassClassification.Trainers.BootMaeImageClassification(new BootMaeImageClassificationTrainer.Options
        {
            Encoder = encoder,
            FreezeEncoder = true,                             // only the linear head trains
            SourceBlock = architecture.Depth * 10 / 12 - 1,   // the official probe reads block 10 of 12 (0-based 9)
            MaxEpochs = fineTuneEpochs,
            BatchSize = 64,
        });
        using var probeModel = probe.Fit(trainImages);
        var probeMetrics = ml.MulticlassClassification.Evaluate(probeModel.Transform(testImages));
        Console.WriteLine($"Linear probe: macro accuracy {probeMetrics.MacroAccuracy:P1}");
        #endregion

        #region snippet:tutorial-save
        // One model from file path to class name: prepare → classifier → key back to text.
        var toText = ml.Transforms.Conversion.MapKeyToValue("PredictedLabel").Fit(classifier.Transform(testImages));
        var app = prepare.Append(classifier).Append(toText);
        var modelPath = Path.Combine(workDir, "fashion-classifier.zip");
        ml.Model.SaveBootMae(app, train.Schema, modelPath);   // plain Model.Save would refuse: the weights need BootMAE's format
        #endregion

        #region snippet:tutorial-predict
        var loaded = ml.Model.LoadBootMae(modelPath, out var inputSchema);
        using var engine = ml.Model.CreatePredictionEngine<FashionRow, FashionPrediction>(loaded);   // the engine owns `loaded`
        var firstTestImage = File.ReadLines(files.TestTsvPath).Skip(1).First().Split('\t')[0];
        var prediction = engine.Predict(new FashionRow { ImagePath = firstTestImage });
        Console.WriteLine($"{firstTestImage}: {prediction.PredictedLabel} ({prediction.Score.Max():P0})");
        #endregion

        if (tiny)
        {
            Directory.Delete(workDir, recursive: true);
        }

        return (featureMetrics.MacroAccuracy, fineTuneMetrics.MacroAccuracy, probeMetrics.MacroAccuracy, prediction.PredictedLabel);
    }
}
