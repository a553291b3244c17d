using System.Diagnostics;
using System.Globalization;
using Microsoft.ML;
using Microsoft.ML.BootMae;
using Microsoft.ML.BootMae.Visualization;
using Microsoft.ML.Data;
using Microsoft.ML.Transforms;

namespace BootMae.Samples.Quickstart;

/// <summary>Settings of the quickstart; <see cref="Default"/> runs in about ten minutes on a 2-core CPU.</summary>
public sealed record QuickstartSettings
{
    /// <summary>The full run: all 10,000 training images, 100 labels per class, all 2,000 test images.</summary>
    public static QuickstartSettings Default { get; } = new();

    /// <summary>A smoke run of about a minute: 1,000 unlabelled images, 20 labels per class, 500 test images.</summary>
    public static QuickstartSettings Quick { get; } = new()
    {
        TrainPerClass = 100, LabelledPerClass = 20, TestPerClass = 50, PretrainEpochs = 3, FineTuneEpochs = 5,
        OutputDirectory = Path.Combine("out", "quickstart-quick"),
    };

    /// <summary>Folder for the data, pictures and model.</summary>
    public string OutputDirectory { get; init; } = Path.Combine("out", "quickstart");

    /// <summary>Network shape.</summary>
    public BootMaeArchitecture Architecture { get; init; } = SampleArchitectures.Small28;

    /// <summary>Unlabelled images per class for pretraining (at most 1,000).</summary>
    public int TrainPerClass { get; init; } = 1000;

    /// <summary>Labelled images per class for fine-tuning, taken from the pretraining images.</summary>
    public int LabelledPerClass { get; init; } = 100;

    /// <summary>Test images per class (at most 200).</summary>
    public int TestPerClass { get; init; } = 200;

    /// <summary>Pretraining epochs.</summary>
    public int PretrainEpochs { get; init; } = 5;

    /// <summary>Fine-tuning (and linear-probe) epochs.</summary>
    public int FineTuneEpochs { get; init; } = 30;

    /// <summary>Images per optimizer step in every run, so equal steps also mean equal images seen.</summary>
    public int BatchSize { get; init; } = 64;

    /// <summary>Also train a linear probe on the frozen pretrained encoder.</summary>
    public bool LinearProbe { get; init; } = true;

    /// <summary>Seed of everything.</summary>
    public int Seed { get; init; } = 1;
}

/// <summary>One row of the results table.</summary>
public sealed record QuickstartResult(string Method, int LabelsUsed, long Steps, double Accuracy, double MacroAccuracy, TimeSpan WallTime);

/// <summary>The quickstart: BootMAE pretraining, fine-tuning with few labels, and the same budget from scratch.</summary>
public static class QuickstartSample
{
    /// <summary>Runs the quickstart and returns the table's rows; progress and results go to <paramref name="output"/>.</summary>
    public static IReadOnlyList<QuickstartResult> Run(QuickstartSettings settings, TextWriter output)
    {
        ArgumentNullException.ThrowIfNull(settings);
        var total = Stopwatch.StartNew();
        var outputDirectory = Path.GetFullPath(settings.OutputDirectory);
        Directory.CreateDirectory(outputDirectory);
        var files = FashionMnistSample.Materialize(Path.Combine(outputDirectory, "data"), settings.TrainPerClass, settings.TestPerClass);
        var trainRows = ImageRow.ReadTsv(files.TrainTsvPath);
        var labelledRows = ImageRow.Balanced(trainRows, settings.LabelledPerClass);
        var ml = new MLContext(settings.Seed);
        var unlabelled = ml.Data.LoadFromEnumerable(trainRows.Select(r => new UnlabeledImageRow { ImagePath = r.ImagePath }));
        var labelled = ml.Data.LoadFromEnumerable(labelledRows);
        var test = ml.Data.LoadFromTextFile<ImageRow>(files.TestTsvPath, hasHeader: true, separatorChar: '\t');
        var architecture = settings.Architecture;
        output.WriteLine($"Fashion-MNIST: {trainRows.Count} unlabelled training images, {labelledRows.Count} labelled ({settings.LabelledPerClass} per class), {files.TestCount} test images.");
        output.WriteLine($"Architecture: {SampleArchitectures.Describe(architecture)}; batch {settings.BatchSize}.");
        output.WriteLine($"Output: {outputDirectory}");
        WriteMaskPicture(architecture, settings, outputDirectory, output);

        var results = new List<QuickstartResult>();

        // (a) Self-supervised pretraining on every training image, labels unused.
        output.WriteLine();
        output.WriteLine($"[1/4] BootMAE pretraining, {settings.PretrainEpochs} epochs on {trainRows.Count} unlabelled images");
        var pretrainProgress = new TrainingProgress(output, "pretrain", settings.PretrainEpochs, settings.BatchSize);
        var clock = Stopwatch.StartNew();
        using var pretrained = ml.Transforms.LoadRawImageBytes("Image", files.Directory, nameof(UnlabeledImageRow.ImagePath))
            .Append(ml.Transforms.BootMaePretrain(new BootMaePretrainingEstimator.Options
            {
                Architecture = architecture,
                MaxEpochs = settings.PretrainEpochs,
                BatchSize = settings.BatchSize,
                Seed = settings.Seed,
                MetricsCallback = pretrainProgress.Report,
                LogEveryNSteps = 5,
                ReconstructionPreviewPath = Path.Combine(outputDirectory, "reconstructions.png"),
            }))
            .Fit(unlabelled);
        var pretrainTime = clock.Elapsed;
        var encoder = pretrained.LastTransformer.Encoder;
        var encoderPath = Path.Combine(outputDirectory, "encoder.bootmae");
        encoder.Save(encoderPath);
        var curves = BootMaePictures.TrainingCurves(pretrainProgress.CurvePoints(), Path.Combine(outputDirectory, "pretraining-curves.png"), "BootMAE pretraining");
        output.WriteLine($"  {pretrainProgress.Steps} steps in {TrainingProgress.Clock(pretrainTime)}; encoder saved to {encoderPath}");
        output.WriteLine($"  pictures: {Path.Combine(outputDirectory, "reconstructions.png")}, {curves}");

        // (b) Fine-tuning of the pretrained encoder with 10% of the labels.
        output.WriteLine();
        output.WriteLine($"[2/4] Fine-tuning the pretrained encoder on {labelledRows.Count} labelled images, {settings.FineTuneEpochs} epochs");
        var (fineTuned, fineTuneProgress, fineTuneTime) = TrainClassifier(ml, files, labelled, settings, output, "finetune", settings.FineTuneEpochs, o => o.Encoder = encoder);
        using (fineTuned)
        {
            results.Add(Evaluate(ml, fineTuned, test, output, "BootMAE pretrain + fine-tune", labelledRows.Count, pretrainProgress.Steps + fineTuneProgress.Steps, pretrainTime + fineTuneTime));
            var modelPath = Path.Combine(outputDirectory, "model.zip");
            ml.Model.SaveBootMae(fineTuned, labelled.Schema, modelPath);
            output.WriteLine($"  model saved to {modelPath}");
        }

        // (c) The same classifier from a random encoder with the same number of optimizer steps.
        long budget = pretrainProgress.Steps + fineTuneProgress.Steps;
        long stepsPerEpoch = fineTuneProgress.Reports.First(r => r.IsEpochEnd).Step;
        int scratchEpochs = (int)((budget + stepsPerEpoch - 1) / stepsPerEpoch);
        output.WriteLine();
        output.WriteLine($"[3/4] The same classifier from scratch (random encoder), same budget: {budget} steps = {scratchEpochs} epochs on the {labelledRows.Count} labelled images");
        var (scratch, scratchProgress, scratchTime) = TrainClassifier(ml, files, labelled, settings, output, "scratch", scratchEpochs, o =>
        {
            o.Architecture = architecture;
            o.MaxSteps = budget;
            o.LayerDecay = 1.0; // layer-wise decay only makes sense for a pretrained encoder
        });
        using (scratch)
        {
            results.Add(Evaluate(ml, scratch, test, output, "From scratch, same steps", labelledRows.Count, scratchProgress.Steps, scratchTime));
        }

        // (d) Linear probe: only a linear head on the frozen pretrained encoder.
        if (settings.LinearProbe)
        {
            output.WriteLine();
            output.WriteLine($"[4/4] Linear probe on the frozen pretrained encoder, {settings.FineTuneEpochs} epochs");
            var (probe, probeProgress, probeTime) = TrainClassifier(ml, files, labelled, settings, output, "probe", settings.FineTuneEpochs, o =>
            {
                o.Encoder = encoder;
                o.FreezeEncoder = true;
                o.LearningRate = 1e-2;
                o.LabelSmoothing = 0;
            });
            using (probe)
            {
                results.Add(Evaluate(ml, probe, test, output, "BootMAE pretrain + linear probe", labelledRows.Count, pretrainProgress.Steps + probeProgress.Steps, pretrainTime + probeTime));
            }
        }

        output.WriteLine();
        output.WriteLine($"Test set: {files.TestCount} images. Steps and wall time include pretraining where it is used.");
        PrintTable(output, results);
        PredictWithSavedModel(ml, Path.Combine(outputDirectory, "model.zip"), files, output);
        output.WriteLine();
        output.WriteLine($"Done in {TrainingProgress.Clock(total.Elapsed)}. Pictures in {outputDirectory}: masks.png, reconstructions.png, pretraining-curves.png.");
        return results;
    }

    /// <summary>Prints the results table.</summary>
    public static void PrintTable(TextWriter output, IEnumerable<QuickstartResult> results)
    {
        var c = CultureInfo.InvariantCulture;
        TextTable.Print(output, ["method", "labels used", "optimizer steps", "test accuracy", "macro accuracy", "wall time"],
            results.Select(r => (IReadOnlyList<string>)
            [
                r.Method, r.LabelsUsed.ToString("N0", c), r.Steps.ToString("N0", c), r.Accuracy.ToString("P1", c),
                r.MacroAccuracy.ToString("P1", c), TrainingProgress.Clock(r.WallTime),
            ]));
    }

    private static (TransformerChain<KeyToValueMappingTransformer> Model, TrainingProgress Progress, TimeSpan Time) TrainClassifier(MLContext ml,
        FashionMnistFiles files, IDataView labelled, QuickstartSettings settings, TextWriter output, string name, int epochs,
        Action<BootMaeImageClassificationTrainer.Options> configure)
    {
        var progress = new TrainingProgress(output, name, epochs, settings.BatchSize);
        var options = new BootMaeImageClassificationTrainer.Options
        {
            MaxEpochs = epochs,
            BatchSize = settings.BatchSize,
            Seed = settings.Seed,
            MetricsCallback = progress.Report,
            LogEveryNSteps = 5,
        };
        configure(options);
        var clock = Stopwatch.StartNew();
        var model = ml.Transforms.Conversion.MapValueToKey("Label")
            .Append(ml.Transforms.LoadRawImageBytes("Image", files.Directory, nameof(ImageRow.ImagePath)))
            .Append(ml.MulticlassClassification.Trainers.BootMaeImageClassification(options))
            .Append(ml.Transforms.Conversion.MapKeyToValue("PredictedLabel"))
            .Fit(labelled);
        return (model, progress, clock.Elapsed);
    }

    private static QuickstartResult Evaluate(MLContext ml, ITransformer model, IDataView test, TextWriter output, string method, int labels, long steps, TimeSpan time)
    {
        var metrics = ml.MulticlassClassification.Evaluate(model.Transform(test));
        output.WriteLine(string.Format(CultureInfo.InvariantCulture, "  test accuracy {0:P1}, macro accuracy {1:P1}", metrics.MicroAccuracy, metrics.MacroAccuracy));
        return new QuickstartResult(method, labels, steps, metrics.MicroAccuracy, metrics.MacroAccuracy, time);
    }

    private static void WriteMaskPicture(BootMaeArchitecture architecture, QuickstartSettings settings, string outputDirectory, TextWriter output)
    {
        var arrays = FashionMnistSample.LoadArrays(trainPerClass: 0, testPerClass: 1);
        var images = Enumerable.Range(0, 5).Select(arrays.Test.GetImage).ToArray();
        var labels = Enumerable.Range(0, 5).Select(i => arrays.ClassNames[arrays.Test.Labels[i]]).ToArray();
        var path = BootMaePictures.MaskComparison(images,
            BootMaeMasks.Sample(architecture, BootMaeMasking.Random, images.Length, settings.Seed),
            BootMaeMasks.Sample(architecture, BootMaeMasking.BlockFill, images.Length, settings.Seed),
            architecture.Channels, architecture.ImageSize, architecture.ImageSize, architecture.PatchSize,
            Path.Combine(outputDirectory, "masks.png"), "Random vs block-wise masking (75% of the patches)", labels);
        output.WriteLine($"Masks: {path}");
    }

    private static void PredictWithSavedModel(MLContext ml, string modelPath, FashionMnistFiles files, TextWriter output)
    {
        using var loaded = (IDisposable)ml.Model.LoadBootMae(modelPath, out _);
        using var engine = ml.Model.CreatePredictionEngine<ImageRow, ImagePrediction>((ITransformer)loaded, new PredictionEngineOptions { OwnsTransformer = false });
        output.WriteLine();
        output.WriteLine($"Reloaded {Path.GetFileName(modelPath)}; predictions for a few test images:");
        var rows = ImageRow.ReadTsv(files.TestTsvPath);
        foreach (var row in rows.Where((_, i) => i % Math.Max(1, rows.Count / 6) == 0).Take(6))
        {
            var prediction = engine.Predict(new ImageRow { ImagePath = row.ImagePath });
            output.WriteLine(string.Format(CultureInfo.InvariantCulture, "  {0,-16} true {1,-12} predicted {2,-12} ({3:P0})",
                row.ImagePath, row.Label, prediction.PredictedLabel, prediction.Score.Max()));
        }
    }
}
