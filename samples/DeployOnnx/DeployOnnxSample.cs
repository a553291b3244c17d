using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Microsoft.ML;
using Microsoft.ML.BootMae;
using Microsoft.ML.Data;
using Microsoft.ML.OnnxRuntime;

namespace BootMae.Samples.DeployOnnx;

/// <summary>Settings of the deployment sample.</summary>
public sealed record DeployOnnxSettings
{
    /// <summary>200 training and 50 test images per class, three fine-tuning epochs.</summary>
    public static DeployOnnxSettings Default { get; } = new();

    /// <summary>A smoke run of a few seconds.</summary>
    public static DeployOnnxSettings Quick { get; } = new()
    {
        TrainPerClass = 10, TestPerClass = 3, FineTuneEpochs = 1, OutputDirectory = Path.Combine("out", "deploy-onnx-quick"),
    };

    /// <summary>A saved encoder to fine-tune (the quickstart writes out/quickstart/encoder.bootmae); <c>null</c> starts from a random one.</summary>
    public string? EncoderPath { get; init; }

    /// <summary>Network shape when no encoder is given.</summary>
    public BootMaeArchitecture Architecture { get; init; } = BootMaeArchitecture.Small28;

    /// <summary>Training images per class (at most 1,000).</summary>
    public int TrainPerClass { get; init; } = 200;

    /// <summary>Test images per class (at most 200).</summary>
    public int TestPerClass { get; init; } = 50;

    /// <summary>Fine-tuning epochs.</summary>
    public int FineTuneEpochs { get; init; } = 3;

    /// <summary>Folder for data, the ONNX model and the ML.NET zip.</summary>
    public string OutputDirectory { get; init; } = Path.Combine("out", "deploy-onnx");

    /// <summary>Seed of everything.</summary>
    public int Seed { get; init; } = 1;
}

/// <summary>What the deployment sample wrote and measured.</summary>
/// <param name="OnnxPath">The exported classifier.</param>
/// <param name="ModelZipPath">The ML.NET pipeline (LoadImages → ResizeImages → ExtractPixels → ApplyOnnxModel).</param>
/// <param name="TestImages">Test images predicted.</param>
/// <param name="Agreement">Share of test images on which the ONNX pipeline predicts TorchSharp's class.</param>
/// <param name="MaxScoreDifference">Largest |ONNX − TorchSharp| over all probabilities.</param>
/// <param name="Accuracy">Test accuracy of the ONNX pipeline.</param>
public sealed record DeployOnnxResult(string OnnxPath, string ModelZipPath, int TestImages, double Agreement, double MaxScoreDifference, double Accuracy);

/// <summary>Fine-tune with TorchSharp, export to ONNX, then predict with ML.NET and ONNX Runtime alone.</summary>
public static class DeployOnnxSample
{
    /// <summary>Trains, exports and compares; progress and results go to <paramref name="output"/>.</summary>
    /// <param name="settings">What to run.</param>
    /// <param name="output">Where progress and results go.</param>
    /// <param name="cancellation">Stops fine-tuning before the next step (Ctrl+C).</param>
    /// <exception cref="OperationCanceledException">Cancelled.</exception>
    public static DeployOnnxResult Run(DeployOnnxSettings settings, TextWriter output, CancellationToken cancellation = default)
    {
        ArgumentNullException.ThrowIfNull(settings);
        var total = Stopwatch.StartNew();
        var folder = Path.GetFullPath(settings.OutputDirectory);
        Directory.CreateDirectory(folder);
        var files = FashionMnistSample.Materialize(Path.Combine(folder, "data"), settings.TrainPerClass, settings.TestPerClass);
        var ml = new MLContext(settings.Seed);
        var train = ml.Data.LoadFromTextFile<ImageRow>(files.TrainTsvPath, hasHeader: true, separatorChar: '\t');
        var test = ml.Data.LoadFromTextFile<ImageRow>(files.TestTsvPath, hasHeader: true, separatorChar: '\t');
        output.WriteLine($"Fashion-MNIST: {files.TrainCount} training and {files.TestCount} test images.");

        // 1. Train here, with TorchSharp.
        using var encoder = settings.EncoderPath is { } path ? BootMaeEncoder.Load(path) : BootMaeEncoder.CreateRandom(settings.Architecture, settings.Seed);
        var architecture = encoder.Architecture;
        var progress = new TrainingProgress(output, "finetune", settings.FineTuneEpochs, 32);
        var trainer = ml.Transforms.Conversion.MapValueToKey("Label")
            .Append(ml.Transforms.LoadRawImageBytes("Image", files.Directory, nameof(ImageRow.ImagePath)))
            .Append(ml.MulticlassClassification.Trainers.BootMaeImageClassification(new BootMaeImageClassificationTrainer.Options
            {
                Encoder = encoder, MaxEpochs = settings.FineTuneEpochs, BatchSize = 32, Seed = settings.Seed,
                MetricsCallback = progress.Report, LogEveryNSteps = 5, CancellationToken = cancellation,
            }));
        using var model = progress.Run(() => SampleCommandLine.ExplainCancellation(() => trainer.Fit(train),
            () => $"Fine-tuning stopped after step {progress.Steps} was reported; nothing was exported (a run of a few minutes: start it again)."));
        output.WriteLine($"Fine-tuned {(settings.EncoderPath is null ? "a randomly initialised" : "the given")} {architecture.Depth}-block encoder for {settings.FineTuneEpochs} epoch(s).");

        // 2. Export: one .onnx file, then an ML.NET pipeline of ML.NET's own transforms in front of it.
        var onnx = Path.Combine(folder, "classifier.onnx");
        model.LastTransformer.ExportOnnx(onnx);
        var pipeline = ml.Transforms.BootMaeOnnxInput(architecture, files.Directory, nameof(ImageRow.ImagePath))
            .Append(ml.Transforms.ApplyOnnxModel(["scores", "predicted"], ["pixels"], onnx));
        var zip = Path.Combine(folder, "model.zip");
        ml.Model.Save(pipeline.Fit(train), train.Schema, zip);
        output.WriteLine($"Exported {onnx} ({new FileInfo(onnx).Length / 1024.0:F0} KiB) and {zip}.");

        // 3. Serve: what an app without this package does (see Serve), against the TorchSharp predictions.
        var served = Serve(zip, onnx, files.TestTsvPath, output);
        var scored = model.Transform(test);
        var expectedScores = scored.GetColumn<float[]>("Score").ToList();
        var expectedLabels = scored.GetColumn<uint>("PredictedLabel").ToList();
        var labels = test.GetColumn<string>(nameof(ImageRow.Label)).ToList();
        int agree = 0, correct = 0;
        double max = 0;
        for (int i = 0; i < served.Count; i++)
        {
            agree += served[i].Index == expectedLabels[i] - 1 ? 1 : 0;
            correct += served[i].Label == labels[i] ? 1 : 0;
            max = Math.Max(max, served[i].Scores.Zip(expectedScores[i], (a, b) => Math.Abs(a - b)).Max());
        }

        var result = new DeployOnnxResult(onnx, zip, served.Count, (double)agree / served.Count, max, (double)correct / served.Count);
        output.WriteLine(string.Format(CultureInfo.InvariantCulture,
            "ONNX pipeline vs TorchSharp on {0} test images: same class on {1:P1}, largest probability difference {2:E1}; accuracy {3:P1}. Done in {4}.",
            result.TestImages, result.Agreement, result.MaxScoreDifference, result.Accuracy, TrainingProgress.Clock(total.Elapsed)));
        return result;
    }

    /// <summary>
    /// Predicts the images of a TSV (ImagePath column) with a saved ONNX pipeline: only ML.NET, ImageAnalytics,
    /// OnnxTransformer and ONNX Runtime are used here, so this is the code of a serving app that does not reference
    /// Microsoft.ML.BootMae or TorchSharp (and it never loads libtorch).
    /// </summary>
    public static List<(long Index, string Label, float[] Scores)> Serve(string modelZip, string onnxPath, string imagesTsv, TextWriter output)
    {
        var ml = new MLContext();
        var model = ml.Model.Load(modelZip, out _);
        using var session = new InferenceSession(onnxPath);
        var names = JsonSerializer.Deserialize<string[]>(session.ModelMetadata.CustomMetadataMap["bootmae.classNames"])!;
        var images = ml.Data.LoadFromTextFile<ImageRow>(imagesTsv, hasHeader: true, separatorChar: '\t');
        var scored = model.Transform(images);
        var scores = scored.GetColumn<VBuffer<float>>("scores").Select(v => v.DenseValues().ToArray()).ToList();
        var predicted = scored.GetColumn<VBuffer<long>>("predicted").Select(v => v.DenseValues().Single()).ToList();
        var paths = images.GetColumn<string>(nameof(ImageRow.ImagePath)).ToList();
        for (int i = 0; i < Math.Min(3, paths.Count); i++)
        {
            output.WriteLine(string.Format(CultureInfo.InvariantCulture, "  {0} -> {1} ({2:P0})", paths[i], names[predicted[i]], scores[i][predicted[i]]));
        }

        return predicted.Select((p, i) => (p, names[p], scores[i])).ToList();
    }
}
