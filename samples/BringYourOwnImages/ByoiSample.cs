using System.Diagnostics;
using System.Globalization;
using Microsoft.ML;
using Microsoft.ML.BootMae;
using Microsoft.ML.Data;

namespace BootMae.Samples.BringYourOwnImages;

/// <summary>Settings of the bring-your-own-images sample (the command-line options).</summary>
public sealed record ByoiSettings
{
    /// <summary>The image folder; <c>null</c> only to predict with an existing <see cref="ModelPath"/>.</summary>
    public string? ImageDirectory { get; init; }

    /// <summary><c>finetune</c> or <c>pretrain</c>.</summary>
    public string Mode { get; init; } = "finetune";

    /// <summary>Pretrain on every image under the folder, ignoring sub-folder names.</summary>
    public bool Unlabeled { get; init; }

    /// <summary>Network shape (ignored when fine-tuning from <see cref="EncoderPath"/>).</summary>
    public BootMaeArchitecture Architecture { get; init; } = BootMaeArchitecture.Small28;

    /// <summary>Training epochs.</summary>
    public int Epochs { get; init; } = 10;

    /// <summary>Images per optimizer step.</summary>
    public int BatchSize { get; init; } = 32;

    /// <summary>A pretrained encoder to fine-tune from.</summary>
    public string? EncoderPath { get; init; }

    /// <summary>Where the model is saved (and read from, to predict without training).</summary>
    public string ModelPath { get; init; } = Path.Combine("out", "byoi", "model.zip");

    /// <summary>Files to classify.</summary>
    public IReadOnlyList<string> Predict { get; init; } = Array.Empty<string>();

    /// <summary>Seed of everything.</summary>
    public int Seed { get; init; } = 1;

    /// <summary>Continue training from the checkpoint next to <see cref="ModelPath"/> (a run stopped with Ctrl+C leaves one).</summary>
    public bool Resume { get; init; }
}

/// <summary>One classified file.</summary>
public sealed record ByoiPrediction(string Path, string Label, float Probability);

/// <summary>Pretrain or fine-tune on a folder of images, save the model, classify files.</summary>
public static class ByoiSample
{
    /// <summary>File extensions searched (case-insensitive).</summary>
    public static IReadOnlyList<string> Extensions { get; } = [".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"];

    /// <summary>Runs the sample; returns the predictions of <see cref="ByoiSettings.Predict"/> (empty when none or when pretraining).</summary>
    /// <exception cref="SampleUsageException">The settings or the folder cannot work; the message says why.</exception>
    /// <param name="settings">What to run.</param>
    /// <param name="output">Where progress and results go.</param>
    /// <param name="cancellation">Stops training before the next step (Ctrl+C); the checkpoint next to the model is kept.</param>
    /// <exception cref="OperationCanceledException">Cancelled; the message says where the checkpoint is.</exception>
    public static IReadOnlyList<ByoiPrediction> Run(ByoiSettings settings, TextWriter output, CancellationToken cancellation = default)
    {
        ArgumentNullException.ThrowIfNull(settings);
        foreach (var file in settings.Predict.Where(f => !File.Exists(f)))
        {
            throw new SampleUsageException($"--predict: no file '{Path.GetFullPath(file)}'.");
        }

        if (settings.EncoderPath is { } encoderPath && !File.Exists(encoderPath))
        {
            throw new SampleUsageException($"--encoder: no file '{Path.GetFullPath(encoderPath)}'; write one with --mode pretrain.");
        }

        var ml = new MLContext(settings.Seed);
        if (settings.ImageDirectory is null)
        {
            if (settings.Predict.Count == 0 || !File.Exists(settings.ModelPath))
            {
                throw new SampleUsageException("--images DIR is required (or --model OUT.zip of a trained classifier with --predict FILE... to classify without training).");
            }

            return Predict(ml, settings.ModelPath, settings.Predict, output);
        }

        var folder = Path.GetFullPath(settings.ImageDirectory);
        if (!Directory.Exists(folder))
        {
            throw new SampleUsageException($"--images: folder '{folder}' does not exist.");
        }

        var rows = FindImages(folder, settings.Unlabeled);
        if (rows.Count == 0)
        {
            throw new SampleUsageException($"--images: no images under '{folder}' (searched {string.Join(" ", Extensions)}, recursively).");
        }

        var modelPath = Path.GetFullPath(settings.ModelPath);
        Directory.CreateDirectory(Path.GetDirectoryName(modelPath)!);
        return settings.Mode == "pretrain"
            ? Pretrain(ml, settings, folder, rows, modelPath, output, cancellation)
            : FineTune(ml, settings, folder, rows, modelPath, output, cancellation);
    }

    /// <summary>Writes Fashion-MNIST as <c>DIR/train/&lt;class&gt;/*.png</c> and ten unseen images as <c>DIR/new/&lt;class&gt;-NNNNN.png</c>.</summary>
    public static void MakeExample(string directory, int trainPerClass, TextWriter output)
    {
        var root = Path.GetFullPath(directory);
        var staging = Path.Combine(root, ".fashion-mnist");
        var files = FashionMnistSample.Materialize(staging, trainPerClass, testPerClass: 1);
        foreach (var row in ImageRow.ReadTsv(files.TrainTsvPath))
        {
            var target = Path.Combine(root, "train", SafeName(row.Label), Path.GetFileName(row.ImagePath));
            Directory.CreateDirectory(Path.GetDirectoryName(target)!);
            File.Copy(Path.Combine(files.Directory, row.ImagePath), target, overwrite: true);
        }

        Directory.CreateDirectory(Path.Combine(root, "new"));
        foreach (var row in ImageRow.ReadTsv(files.TestTsvPath))
        {
            File.Copy(Path.Combine(files.Directory, row.ImagePath), Path.Combine(root, "new", $"{SafeName(row.Label)}-{Path.GetFileName(row.ImagePath)}"), overwrite: true);
        }

        Directory.Delete(staging, recursive: true);
        output.WriteLine($"Wrote {files.TrainCount} images in {files.ClassNames.Count} class folders under {Path.Combine(root, "train")}");
        output.WriteLine($"and {files.TestCount} unseen images (named after their class) under {Path.Combine(root, "new")}.");
    }

    private static string SafeName(string label) => string.Concat(label.Select(c => char.IsLetterOrDigit(c) || c is '-' or '_' ? c : '-'));

    private static List<ImageRow> FindImages(string folder, bool unlabeled) => Directory
        .EnumerateFiles(folder, "*", SearchOption.AllDirectories)
        .Where(f => Extensions.Contains(Path.GetExtension(f).ToLowerInvariant()))
        .Order(StringComparer.Ordinal)
        .Select(f =>
        {
            var relative = Path.GetRelativePath(folder, f);
            var parts = relative.Split(Path.DirectorySeparatorChar);
            return new ImageRow { ImagePath = relative, Label = unlabeled || parts.Length == 1 ? string.Empty : parts[0] };
        })
        .ToList();

    private static IReadOnlyList<ByoiPrediction> Pretrain(MLContext ml, ByoiSettings settings, string folder, List<ImageRow> rows, string modelPath, TextWriter output, CancellationToken cancellation)
    {
        if (settings.Predict.Count > 0)
        {
            throw new SampleUsageException("--predict needs a classifier: use --mode finetune (pretraining learns embeddings, not classes).");
        }

        var architecture = SettingsArchitecture(settings);
        output.WriteLine($"Pretraining on {rows.Count} images (labels unused): {SampleArchitectures.Describe(architecture)}, {settings.Epochs} epochs of batch {settings.BatchSize}.");
        var data = ml.Data.LoadFromEnumerable(rows.Select(r => new UnlabeledImageRow { ImagePath = r.ImagePath }));
        var progress = new TrainingProgress(output, "pretrain", settings.Epochs, settings.BatchSize);
        using var initial = settings.EncoderPath is { } path ? BootMaeEncoder.Load(path) : null;
        var checkpoints = CheckpointFolder(modelPath);
        var pretrainer = ml.Transforms.LoadRawImageBytes("Image", folder, nameof(ImageRow.ImagePath))
            .Append(ml.Transforms.BootMaePretrain(new BootMaePretrainingEstimator.Options
            {
                Architecture = initial is null ? architecture : null, InitialEncoder = initial, MaxEpochs = settings.Epochs,
                BatchSize = settings.BatchSize, Seed = settings.Seed, MetricsCallback = progress.Report, LogEveryNSteps = 5,
                ReconstructionPreviewPath = Path.ChangeExtension(modelPath, ".reconstructions.png"),
                CancellationToken = cancellation, CheckpointDirectory = checkpoints, ResumeFromCheckpoint = settings.Resume,
            }));
        using var model = progress.Run(() => SampleCommandLine.ExplainCancellation(() => pretrainer.Fit(data), () => Kept(progress, checkpoints)));
        ml.Model.SaveBootMae(model, data.Schema, modelPath);
        var encoderPath = Path.ChangeExtension(modelPath, ".encoder.bootmae");
        model.LastTransformer.Encoder.Save(encoderPath);
        output.WriteLine($"Saved the featurizing pipeline to {modelPath} and the encoder to {encoderPath}");
        output.WriteLine($"(fine-tune from it with --encoder {encoderPath}); reconstructions: {Path.ChangeExtension(modelPath, ".reconstructions.png")}");
        return Array.Empty<ByoiPrediction>();
    }

    private static IReadOnlyList<ByoiPrediction> FineTune(MLContext ml, ByoiSettings settings, string folder, List<ImageRow> rows, string modelPath, TextWriter output, CancellationToken cancellation)
    {
        var labelled = rows.Where(r => r.Label.Length > 0).ToList();
        var classes = labelled.Select(r => r.Label).Distinct().Order(StringComparer.Ordinal).ToArray();
        if (settings.Unlabeled)
        {
            throw new SampleUsageException("--unlabeled only works with --mode pretrain: fine-tuning needs one sub-folder per class.");
        }

        if (classes.Length < 2)
        {
            throw new SampleUsageException(classes.Length == 0
                ? $"--images: fine-tuning needs images in one sub-folder per class (DIR/<class>/...), but '{folder}' has none. Use --mode pretrain for unlabelled images."
                : $"--images: fine-tuning needs at least two classes, but '{folder}' has only '{classes[0]}'. Add a sub-folder per class.");
        }

        if (rows.Count > labelled.Count)
        {
            output.WriteLine($"Note: {rows.Count - labelled.Count} images directly in the folder have no class and are not used for fine-tuning.");
        }

        using var encoder = settings.EncoderPath is { } path ? BootMaeEncoder.Load(path) : null;
        var architecture = encoder?.Architecture ?? SettingsArchitecture(settings);
        output.WriteLine($"Fine-tuning on {labelled.Count} images of {classes.Length} classes ({string.Join(", ", classes.Select(c => $"{c}: {labelled.Count(r => r.Label == c)}"))}).");
        output.WriteLine(encoder is null
            ? $"No --encoder: training {SampleArchitectures.Describe(architecture)} from a random start (pretrain first with --mode pretrain for better accuracy)."
            : $"Starting from the pretrained encoder {Path.GetFullPath(settings.EncoderPath!)}.");

        // Hold out every fifth image of each class to measure accuracy on images the model has not seen.
        var holdOut = labelled.GroupBy(r => r.Label).SelectMany(g => g.Where((_, i) => i % 5 == 4)).ToHashSet();
        var train = ml.Data.LoadFromEnumerable(labelled.Where(r => !holdOut.Contains(r)).ToList());
        var heldOut = ml.Data.LoadFromEnumerable(holdOut.ToList());
        var progress = new TrainingProgress(output, "finetune", settings.Epochs, settings.BatchSize);
        var clock = Stopwatch.StartNew();
        var checkpoints = CheckpointFolder(modelPath);
        var pipeline = ml.Transforms.Conversion.MapValueToKey("Label")
            .Append(ml.Transforms.LoadRawImageBytes("Image", folder, nameof(ImageRow.ImagePath)))
            .Append(ml.MulticlassClassification.Trainers.BootMaeImageClassification(new BootMaeImageClassificationTrainer.Options
            {
                Encoder = encoder, Architecture = encoder is null ? architecture : null, MaxEpochs = settings.Epochs,
                BatchSize = settings.BatchSize, Seed = settings.Seed, MetricsCallback = progress.Report, LogEveryNSteps = 5,
                CancellationToken = cancellation, CheckpointDirectory = checkpoints, ResumeFromCheckpoint = settings.Resume,
            }))
            .Append(ml.Transforms.Conversion.MapKeyToValue("PredictedLabel"));
        using var model = progress.Run(() => SampleCommandLine.ExplainCancellation(() => pipeline.Fit(train), () => Kept(progress, checkpoints)));
        if (holdOut.Count > 0)
        {
            var metrics = ml.MulticlassClassification.Evaluate(model.Transform(heldOut));
            output.WriteLine(string.Format(CultureInfo.InvariantCulture, "Held-out accuracy on {0} images: {1:P1} (macro {2:P1}); trained in {3}.",
                holdOut.Count, metrics.MicroAccuracy, metrics.MacroAccuracy, TrainingProgress.Clock(clock.Elapsed)));
        }

        ml.Model.SaveBootMae(model, train.Schema, modelPath);
        output.WriteLine($"Saved the classifier to {modelPath}");
        return settings.Predict.Count == 0 ? Array.Empty<ByoiPrediction>() : Predict(ml, modelPath, settings.Predict, output);
    }

    // Beside the model: out/byoi/model.zip keeps its checkpoints in out/byoi/model.checkpoints/.
    private static string CheckpointFolder(string modelPath) => Path.ChangeExtension(modelPath, ".checkpoints");

    private static string Kept(TrainingProgress progress, string checkpoints) =>
        $"Training stopped; {SampleCommandLine.DescribeCheckpoint(checkpoints)}: run the same command with --resume to continue from it.";

    private static BootMaeArchitecture SettingsArchitecture(ByoiSettings settings) => settings.Architecture;

    private static IReadOnlyList<ByoiPrediction> Predict(MLContext ml, string modelPath, IReadOnlyList<string> files, TextWriter output)
    {
        using var loaded = (IDisposable)ml.Model.LoadBootMae(modelPath, out var schema);
        if (!schema.Any(c => c.Name == "Label") || !((ITransformer)loaded).GetOutputSchema(schema).Any(c => c.Name == "PredictedLabel"))
        {
            throw new SampleUsageException($"--model '{modelPath}' is not a classifier (it was saved by --mode pretrain?); train one with --mode finetune.");
        }

        using var engine = ml.Model.CreatePredictionEngine<ImageRow, ImagePrediction>((ITransformer)loaded, new PredictionEngineOptions { OwnsTransformer = false });
        output.WriteLine($"Predictions of {Path.GetFileName(modelPath)}:");
        var predictions = new List<ByoiPrediction>();
        foreach (var file in files)
        {
            var prediction = engine.Predict(new ImageRow { ImagePath = Path.GetFullPath(file) });
            predictions.Add(new ByoiPrediction(file, prediction.PredictedLabel, prediction.Score.Max()));
            output.WriteLine(string.Format(CultureInfo.InvariantCulture, "  {0}: {1} ({2:P0})", file, prediction.PredictedLabel, prediction.Score.Max()));
        }

        return predictions;
    }
}
