using System.Diagnostics;
using System.Globalization;
using Microsoft.ML;
using Microsoft.ML.BootMae;
using Microsoft.ML.BootMae.Visualization;
using Microsoft.ML.Data;
using Microsoft.ML.Trainers;
using Microsoft.ML.Transforms;

namespace BootMae.Samples.Quickstart;

/// <summary>Settings of the quickstart; <see cref="Default"/> runs in about 12 minutes on a quiet 2-core AVX2-only CPU (less with fast bf16).</summary>
public sealed record QuickstartSettings
{
    /// <summary>The full run: all 10,000 training images, 100 and 10 labels per class, all 2,000 test images.</summary>
    public static QuickstartSettings Default { get; } = new();

    /// <summary>A smoke run of about a minute: 1,000 unlabelled images, 20 and 2 labels per class, 500 test images.</summary>
    public static QuickstartSettings Quick { get; } = new()
    {
        TrainPerClass = 100, LabelledPerClass = 20, FewLabelledPerClass = 2, TestPerClass = 50, PretrainEpochs = 3, FineTuneEpochs = 5,
        FewLabelFineTuneEpochs = 10, OutputDirectory = Path.Combine("out", "quickstart-quick"),
    };

    /// <summary>Folder for the data, pictures and model.</summary>
    public string OutputDirectory { get; init; } = Path.Combine("out", "quickstart");

    /// <summary>Network shape.</summary>
    public BootMaeArchitecture Architecture { get; init; } = BootMaeArchitecture.Small28;

    /// <summary>Unlabelled images per class for pretraining (at most 1,000).</summary>
    public int TrainPerClass { get; init; } = 1000;

    /// <summary>Labelled images per class for fine-tuning, taken from the pretraining images.</summary>
    public int LabelledPerClass { get; init; } = 100;

    /// <summary>Labelled images per class of the few-label case (0 skips it); a subset of the labelled images.</summary>
    public int FewLabelledPerClass { get; init; } = 10;

    /// <summary>Test images per class (at most 200).</summary>
    public int TestPerClass { get; init; } = 200;

    /// <summary>Pretraining epochs (3 of 10,000 images: 471 steps). Each pretraining step costs about as much again in
    /// the equal-total-steps baselines, so this sets most of the run's time.</summary>
    public int PretrainEpochs { get; init; } = 3;

    /// <summary>Fine-tuning epochs on the labelled images (15 of 1,000 images: 240 steps).</summary>
    public int FineTuneEpochs { get; init; } = 15;

    /// <summary>Fine-tuning epochs of the few-label case (its epochs are short).</summary>
    public int FewLabelFineTuneEpochs { get; init; } = 60;

    /// <summary>0-based encoder block the linear probe reads; null: the block before the last, which probed best after
    /// short pretraining of a shallow encoder (docs/results.md).</summary>
    public int? ProbeBlock { get; init; }

    /// <summary>Images per optimizer step in every run, so equal steps also mean equal images seen.</summary>
    public int BatchSize { get; init; } = 64;

    /// <summary>Random resized crop and flip while fine-tuning (every run, pretrained and from scratch). Off: in the
    /// evaluation's fine-tunes of a few hundred steps on these 28-pixel images the crop cost both runs 1–9 points on
    /// held-out images (docs/results.md, "Fine-tuning augmentation"). Pretraining augments either way.</summary>
    public bool FineTuneAugment { get; init; }

    /// <summary>Also train a linear probe on the frozen pretrained encoder.</summary>
    public bool LinearProbe { get; init; } = true;

    /// <summary>Seed of everything.</summary>
    public int Seed { get; init; } = 1;

    /// <summary>Continue pretraining from the checkpoint in <c>OutputDirectory/checkpoints</c> (a run stopped with Ctrl+C leaves one).</summary>
    public bool Resume { get; init; }
}

/// <summary>One row of the results table.</summary>
/// <param name="Method">What was trained.</param>
/// <param name="LabelsUsed">Labelled images used.</param>
/// <param name="Steps">Optimizer steps, pretraining included.</param>
/// <param name="Accuracy">Test accuracy.</param>
/// <param name="MacroAccuracy">Test accuracy averaged over classes.</param>
/// <param name="WallTime">Time, pretraining included.</param>
public sealed record QuickstartResult(string Method, int LabelsUsed, long Steps, double Accuracy, double MacroAccuracy, TimeSpan WallTime);

/// <summary>The quickstart: BootMAE pretraining, fine-tuning with few labels, and the same budget from scratch.</summary>
public static class QuickstartSample
{
    /// <summary>Runs the quickstart and returns the table's rows; progress and results go to <paramref name="output"/>.</summary>
    /// <param name="settings">What to run.</param>
    /// <param name="output">Where progress and results go.</param>
    /// <param name="cancellation">Stops training before the next step (Ctrl+C); pretraining keeps its checkpoint.</param>
    /// <exception cref="OperationCanceledException">Cancelled; the message says what was kept.</exception>
    public static IReadOnlyList<QuickstartResult> Run(QuickstartSettings settings, TextWriter output, CancellationToken cancellation = default)
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
        var labelSets = new List<(int PerClass, IDataView Data, int Count, int Epochs, int Batch)>
        {
            (settings.LabelledPerClass, labelled, labelledRows.Count, settings.FineTuneEpochs, settings.BatchSize),
        };
        if (settings.FewLabelledPerClass > 0 && settings.FewLabelledPerClass < settings.LabelledPerClass)
        {
            var fewRows = ImageRow.Balanced(labelledRows, settings.FewLabelledPerClass);
            // Small batches so that few labels still give a useful number of steps per epoch.
            labelSets.Add((settings.FewLabelledPerClass, ml.Data.LoadFromEnumerable(fewRows), fewRows.Count, settings.FewLabelFineTuneEpochs,
                Math.Max(2, Math.Min(settings.BatchSize, fewRows.Count / 5))));
        }

        // (a) Self-supervised pretraining on every training image, labels unused.
        output.WriteLine();
        output.WriteLine($"[1/5] BootMAE pretraining, {settings.PretrainEpochs} epochs on {trainRows.Count} unlabelled images");
        var pretrainProgress = new TrainingProgress(output, "pretrain", settings.PretrainEpochs, settings.BatchSize);
        var clock = Stopwatch.StartNew();
        var checkpoints = Path.Combine(outputDirectory, "checkpoints");
        var pretrainer = ml.Transforms.LoadRawImageBytes("Image", files.Directory, nameof(UnlabeledImageRow.ImagePath))
            .Append(ml.Transforms.BootMaePretrain(new BootMaePretrainingEstimator.Options
            {
                CancellationToken = cancellation,
                CheckpointDirectory = checkpoints,
                ResumeFromCheckpoint = settings.Resume,
                Architecture = architecture,
                MaxEpochs = settings.PretrainEpochs,
                BatchSize = settings.BatchSize,
                Seed = settings.Seed,
                MetricsCallback = pretrainProgress.Report,
                LogEveryNSteps = 5,
                LogCallback = line => { if (line.Contains("Warning", StringComparison.Ordinal)) { output.WriteLine("  " + line); } },
                ReconstructionPreviewPath = Path.Combine(outputDirectory, "reconstructions.png"),
            }));
        using var pretrained = pretrainProgress.Run(() => SampleCommandLine.ExplainCancellation(() => pretrainer.Fit(unlabelled),
            () => $"Pretraining stopped; {SampleCommandLine.DescribeCheckpoint(checkpoints)}: run again with --resume to continue from it."));
        var pretrainTime = clock.Elapsed;
        var encoder = pretrained.LastTransformer.Encoder;
        var encoderPath = Path.Combine(outputDirectory, "encoder.bootmae");
        encoder.Save(encoderPath);
        var curves = BootMaePictures.TrainingCurves(pretrainProgress.Reports, Path.Combine(outputDirectory, "pretraining-curves.png"), "BootMAE pretraining");
        output.WriteLine($"  {pretrainProgress.Steps} steps in {TrainingProgress.Clock(pretrainTime)}; encoder saved to {encoderPath}");
        if (pretrainProgress.Reports.LastOrDefault() is { PixelLoss: { } pixel, PixelLossZeroBaseline: { } zero } last)
        {
            output.WriteLine(string.Format(CultureInfo.InvariantCulture,
                "  last epoch: pixel loss {0:F4} (predicting 0 would score {1:F4}), feature loss {2:F4}, feature target shared by all images {3:P0}",
                pixel, zero, last.FeatureLoss ?? double.NaN, last.FeatureTargetSharedEnergy ?? double.NaN));
        }

        output.WriteLine($"  pictures: {Path.Combine(outputDirectory, "reconstructions.png")}, {curves}");

        // (b) Fine-tuning of the pretrained encoder; (c) the same from a random encoder for the same epochs; (d) the same
        // from a random encoder given the pretraining steps as extra supervised steps.
        var fineTuneSteps = new Dictionary<int, long>();
        output.WriteLine();
        output.WriteLine("[2/5] Fine-tuning the pretrained encoder");
        int classes = labelledRows.Select(r => r.Label).Distinct().Count();
        foreach (var set in labelSets)
        {
            if (FineTuneSettings.AutoHeadWarmupFraction(set.Count, classes) is > 0 and var warmup)
            {
                output.WriteLine(string.Format(CultureInfo.InvariantCulture,
                    "  {0:N0} labels: the head trains alone for the first {1:P0} of the steps, then everything (the trainer's automatic head warm-up for few labels per class)", set.Count, warmup));
            }

            var (model, progress, time) = TrainClassifier(ml, files, set.Data, settings, output, cancellation, $"finetune-{set.Count}", set.Epochs, set.Batch, o => o.Encoder = encoder);
            using (model)
            {
                results.Add(Evaluate(ml, model, test, output, "BootMAE pretrain + fine-tune", set.Count, pretrainProgress.Steps + progress.Steps, pretrainTime + time));
                fineTuneSteps[set.Count] = progress.Steps;
                if (set.Count == labelledRows.Count)
                {
                    var modelPath = Path.Combine(outputDirectory, "model.zip");
                    ml.Model.SaveBootMae(model, labelled.Schema, modelPath);
                    output.WriteLine($"  model saved to {modelPath}");
                }
            }
        }

        output.WriteLine();
        output.WriteLine("[3/5] The same classifier from scratch (random encoder), same fine-tuning epochs");
        foreach (var set in labelSets)
        {
            var (model, progress, time) = TrainClassifier(ml, files, set.Data, settings, output, cancellation, $"scratch-{set.Count}", set.Epochs, set.Batch, o => o.Architecture = architecture);
            using (model)
            {
                results.Add(Evaluate(ml, model, test, output, "From scratch, same epochs", set.Count, progress.Steps, time));
            }
        }

        output.WriteLine();
        output.WriteLine($"[4/5] From scratch with the pretraining's {pretrainProgress.Steps} steps added as supervised steps (same total steps)");
        foreach (var set in labelSets)
        {
            long budget = pretrainProgress.Steps + fineTuneSteps[set.Count];
            long stepsPerEpoch = (set.Count + set.Batch - 1) / set.Batch;
            int epochs = (int)((budget + stepsPerEpoch - 1) / stepsPerEpoch);
            var (model, progress, time) = TrainClassifier(ml, files, set.Data, settings, output, cancellation, $"scratch-long-{set.Count}", epochs, set.Batch, o =>
            {
                o.Architecture = architecture;
                o.MaxSteps = budget;
            });
            using (model)
            {
                results.Add(Evaluate(ml, model, test, output, "From scratch, same total steps", set.Count, progress.Steps, time));
            }
        }

        // (e) Linear probe: the frozen encoder's features of one block, embedded once, then an ML.NET linear trainer; the
        // same probe of a random encoder says what the pretraining added.
        if (settings.LinearProbe)
        {
            int block = settings.ProbeBlock ?? Math.Max(0, architecture.Depth - 2);
            output.WriteLine();
            output.WriteLine($"[5/5] Linear probe: mean-pooled features of block {block + 1} of {architecture.Depth}, frozen, embedded once, then LbfgsMaximumEntropy on {labelledRows.Count} labels, its L2 strength chosen by 3-fold cross-validation");
            var (probe, l2, probeTime) = TrainProbe(ml, files, labelled, encoder, block, settings.Seed);
            using (probe)
            {
                output.WriteLine(string.Format(CultureInfo.InvariantCulture, "  pretrained encoder: L2 {0}", l2));
                results.Add(Evaluate(ml, probe, test, output, "BootMAE pretrain + linear probe", labelledRows.Count, pretrainProgress.Steps, pretrainTime + probeTime));
            }

            using var random = BootMaeEncoder.CreateRandom(architecture, settings.Seed);
            var (randomProbe, randomL2, randomProbeTime) = TrainProbe(ml, files, labelled, random, block, settings.Seed);
            using (randomProbe)
            {
                output.WriteLine(string.Format(CultureInfo.InvariantCulture, "  random encoder: L2 {0}", randomL2));
                results.Add(Evaluate(ml, randomProbe, test, output, "Random encoder + linear probe", labelledRows.Count, 0, randomProbeTime));
            }
        }

        output.WriteLine();
        output.WriteLine($"Test set: {files.TestCount} images. Steps and wall time include pretraining where it is used.");
        PrintTable(output, results);
        Explain(output, results);
        PredictWithSavedModel(ml, Path.Combine(outputDirectory, "model.zip"), files, output);
        output.WriteLine();
        output.WriteLine($"Done in {TrainingProgress.Clock(total.Elapsed)}. Pictures in {outputDirectory}: masks.png, reconstructions.png, pretraining-curves.png.");
        return results;
    }

    /// <summary>Says what the results table means, in words: the gain of pretraining at each label count against both
    /// baselines, and of the probe against a random encoder's.</summary>
    /// <param name="output">Where the text goes.</param>
    /// <param name="results">The rows of the table (<see cref="Run"/>'s result).</param>
    public static void Explain(TextWriter output, IReadOnlyList<QuickstartResult> results)
    {
        ArgumentNullException.ThrowIfNull(output);
        ArgumentNullException.ThrowIfNull(results);
        var c = CultureInfo.InvariantCulture;
        output.WriteLine();
        output.WriteLine("What the numbers mean:");
        foreach (var labels in results.Select(r => r.LabelsUsed).Distinct())
        {
            double? Accuracy(string method) => results.FirstOrDefault(r => r.LabelsUsed == labels && r.Method == method)?.Accuracy;
            if (Accuracy("BootMAE pretrain + fine-tune") is not { } pretrained)
            {
                continue;
            }

            var parts = new List<string>();
            if (Accuracy("From scratch, same epochs") is { } sameEpochs)
            {
                parts.Add($"{Points(pretrained - sameEpochs)} points against the same fine-tuning from a random encoder");
            }

            if (Accuracy("From scratch, same total steps") is { } sameSteps)
            {
                parts.Add($"{Points(pretrained - sameSteps)} points against a random encoder given the pretraining's steps as supervised steps");
            }

            output.WriteLine(string.Format(c, "  {0:N0} labels: pretraining gives {1}.", labels, string.Join("; ", parts)));
        }

        double? Row(string method) => results.FirstOrDefault(r => r.Method == method)?.Accuracy;
        if (Row("BootMAE pretrain + linear probe") is { } probe && Row("Random encoder + linear probe") is { } randomProbe)
        {
            output.WriteLine($"  linear probe: the pretrained features score {Points(probe - randomProbe)} points against the same probe of a random encoder (each with its own cross-validated L2).");
            if (probe - randomProbe < 0.01)
            {
                output.WriteLine("  After pretraining this short, the frozen features are no easier to separate linearly than a random encoder's:");
                output.WriteLine("  what the pretraining gives shows when the encoder is fine-tuned.");
            }
        }

        output.WriteLine("  The equal-steps row is the stricter test: the random encoder then trains on the labels for as many steps as");
        output.WriteLine("  pretraining and fine-tuning together. Each row is one draw of labelled images, so a gap of a few points either");
        output.WriteLine("  way can be that draw's luck; docs/results.md has two seeds on the full Fashion-MNIST.");
    }

    // A gap in accuracy as signed points. The third section formats a gap that rounds to zero (a two-section format
    // printed a small negative one as "-+0.0").
    private static string Points(double accuracyGap) =>
        (accuracyGap * 100).ToString("+0.0;-0.0;+0.0", CultureInfo.InvariantCulture);

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
        FashionMnistFiles files, IDataView labelled, QuickstartSettings settings, TextWriter output, CancellationToken cancellation, string name, int epochs, int batchSize,
        Action<BootMaeImageClassificationTrainer.Options> configure)
    {
        var progress = new TrainingProgress(output, name, epochs, batchSize);
        var options = new BootMaeImageClassificationTrainer.Options
        {
            MaxEpochs = epochs,
            BatchSize = batchSize,
            Seed = settings.Seed,
            MetricsCallback = progress.Report,
            LogEveryNSteps = 5,
            CancellationToken = cancellation,
            Augment = settings.FineTuneAugment,
        };
        configure(options);
        var clock = Stopwatch.StartNew();
        var pipeline = ml.Transforms.Conversion.MapValueToKey("Label")
            .Append(ml.Transforms.LoadRawImageBytes("Image", files.Directory, nameof(ImageRow.ImagePath)))
            .Append(ml.MulticlassClassification.Trainers.BootMaeImageClassification(options))
            .Append(ml.Transforms.Conversion.MapKeyToValue("PredictedLabel"));
        var model = progress.Run(() => SampleCommandLine.ExplainCancellation(() => pipeline.Fit(labelled),
            () => $"'{name}' stopped after step {progress.Steps} was reported; the pretrained encoder is kept in {Path.Combine(Path.GetFullPath(settings.OutputDirectory), "encoder.bootmae")}."));
        return (model, progress, clock.Elapsed);
    }

    // L2 strengths the probe chooses from. One fixed strength would flatter the pretraining: a random encoder's
    // features do best near 0.03 and pretrained ones near 1 (docs/results.md, "The probe's regularization").
    private static readonly float[] ProbeL2Grid = [0.01f, 0.03f, 0.1f, 0.3f, 1f, 3f];

    // Embeds each image once (a cached view), then standardises the features and fits a multinomial logistic regression
    // whose L2 strength 3-fold cross-validation on the labelled images chooses, as the evaluation command's probe does.
    private static (TransformerChain<TransformerChain<KeyToValueMappingTransformer>> Model, float L2, TimeSpan Time) TrainProbe(MLContext ml,
        FashionMnistFiles files, IDataView labelled, BootMaeEncoder encoder, int block, int seed)
    {
        var clock = Stopwatch.StartNew();
        var featurizer = ml.Transforms.Conversion.MapValueToKey("Label")
            .Append(ml.Transforms.LoadRawImageBytes("Image", files.Directory, nameof(ImageRow.ImagePath)))
            .Append(ml.Transforms.BootMaeFeaturize(new BootMaeFeaturizingEstimator.Options { Encoder = encoder, SourceBlock = block, OutputColumnName = "Features" }))
            .Fit(labelled);
        var features = ml.Data.Cache(featurizer.Transform(labelled), "Label", "Features");
        EstimatorChain<KeyToValueMappingTransformer> Head(float l2) => ml.Transforms.NormalizeMeanVariance("Features")
            .Append(ml.MulticlassClassification.Trainers.LbfgsMaximumEntropy(new LbfgsMaximumEntropyMulticlassTrainer.Options { L1Regularization = 0, L2Regularization = l2 }))
            .Append(ml.Transforms.Conversion.MapKeyToValue("PredictedLabel"));
        float best = ProbeL2Grid.MaxBy(l2 => ml.MulticlassClassification.CrossValidate(features, Head(l2), numberOfFolds: 3, seed: seed).Average(fold => fold.Metrics.MicroAccuracy));
        return (featurizer.Append(Head(best).Fit(features)), best, clock.Elapsed);
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
            architecture, Path.Combine(outputDirectory, "masks.png"),
            new BootMaePictureOptions { Title = "Random vs block-wise masking (75% of the patches)", RowLabels = labels });
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
