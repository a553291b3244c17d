// A NuGet consumer of Microsoft.ML.BootMae, built and run by PackageConsumptionTests against a freshly packed
// package. It uses only the public API and prints one line per step; the test checks the lines and the exit code.
using Microsoft.ML;
using Microsoft.ML.BootMae;
using Microsoft.ML.BootMae.Visualization;
using Microsoft.ML.Data;
using Microsoft.ML.Transforms.Image;

var work = args.Length > 0 ? args[0] : Path.Combine(Path.GetTempPath(), "bootmae-consumer");

// 1. Embedded data set (resource in the package's assembly) written as PNG files via SkiaSharp's native library.
var files = FashionMnistSample.Materialize(Path.Combine(work, "data"), trainPerClass: 2, testPerClass: 1);
Console.WriteLine($"materialized: {files.TrainCount} train, {files.TestCount} test");

// 2. ML.NET + ImageAnalytics read the images back.
var ml = new MLContext(seed: 1);
var rows = ml.Data.LoadFromTextFile<ImageRow>(files.TrainTsvPath, hasHeader: true, separatorChar: '\t');
var pixels = ml.Transforms.LoadImages("Image", files.Directory, nameof(ImageRow.ImagePath))
    .Append(ml.Transforms.ResizeImages("Image", imageWidth: 28, imageHeight: 28))
    .Append(ml.Transforms.ExtractPixels("Pixels", "Image", ImagePixelExtractingEstimator.ColorBits.Red, scaleImage: 1f / 255))
    .Fit(rows).Transform(rows);
var vectors = pixels.GetColumn<VBuffer<float>>("Pixels").Select(v => v.DenseValues().ToArray()).ToList();
Console.WriteLine($"pixels: {vectors.Count} images x {vectors[0].Length} values");

// 3. One BootMAE pretraining step on those pixels through the public engine trainer (loads libtorch and
//    LibTorchSharp, which on Debian 12 / Ubuntu 22.04 needs the library's runtime native-load fix).
var architecture = BootMaeArchitecture.Tiny28 with
{
    EmbedDim = 32, Depth = 2, Heads = 2, RegressorDim = 32, RegressorHeads = 2, PredictorHeads = 2, DecoderDepth = 1,
    DeepBlock = 1,
};
var settings = new BootMaePretrainerSettings
{
    MaxEpochs = 1, MaxSteps = 1, BatchSize = vectors.Count, Seed = 3, Device = BootMaeDevice.Cpu,
    Precision = BootMaePrecision.Float32, LogEveryNSteps = 1,
};
var metrics = new List<BootMaeTrainingMetrics>();
var encoderPath = Path.Combine(work, "encoder.bootmae");
using (var encoder = new BootMaePretrainer(architecture, settings).Train(new PixelSource(vectors), metrics.Add))
{
    encoder.Save(encoderPath);
}

var last = metrics[^1];
Console.WriteLine($"pretrained: step {last.Step}/{last.TotalSteps}, loss finite: {float.IsFinite(last.Loss)}");

// 4. The saved encoder loads back (checksummed file).
using var loaded = BootMaeEncoder.Load(encoderPath);
Console.WriteLine($"encoder round trip: D={loaded.EmbeddingDim}, depth={loaded.Architecture.Depth}, {new FileInfo(encoderPath).Length} bytes");

// 5. Featurize through the ML.NET catalog: LoadRawImageBytes → BootMaeFeaturize → a Features column of D floats.
var bytes = ml.Transforms.LoadRawImageBytes("Image", files.Directory, nameof(ImageRow.ImagePath))
    .Append(ml.Transforms.BootMaeFeaturize(loaded, outputColumnName: "Features", imageColumnName: "Image"));
using (var featurizer = bytes.Fit(rows))
{
    var features = featurizer.Transform(rows).GetColumn<VBuffer<float>>("Features").ToList();
    Console.WriteLine($"featurized: {features.Count} images x {features[0].Length} floats, finite: {features.All(f => f.DenseValues().All(float.IsFinite))}");
}

// 6. Training curves (OxyPlot on the package's SkiaSharp 2.88, in the process that ImageAnalytics used above) and
//    the TensorBoard sink (TorchSharp's SummaryWriter).
var curves = BootMaePictures.TrainingCurves(metrics, Path.Combine(work, "curves.png"));
var sink = BootMaeTensorBoard.Sink(Path.Combine(work, "runs"));
metrics.ForEach(sink);
Console.WriteLine($"curves: {new FileInfo(curves).Length > 0}, tensorboard files: {Directory.GetFiles(Path.Combine(work, "runs"), "events.out.tfevents.*").Length}");

foreach (var line in BootMaeRuntime.PreparationLog)
{
    Console.WriteLine($"native: {line}");
}

Console.WriteLine("BOOTMAE-CONSUMER-OK");
return 0;

/// <summary>All images in one batch per epoch: [count, 1, 28, 28] floats in [0, 1].</summary>
internal sealed class PixelSource(List<float[]> images) : IImageBatchSource
{
    public long? Count => images.Count;

    public IEnumerable<ImageBatch> ReadEpoch(int epoch, int batchSize, CancellationToken cancellationToken)
    {
        for (var start = 0; start < images.Count; start += batchSize)
        {
            var batch = images.Skip(start).Take(batchSize).ToList();
            yield return new ImageBatch(batch.SelectMany(v => v).ToArray(), batch.Count, null);
        }
    }
}

internal sealed class ImageRow
{
    [LoadColumn(0)]
    public string ImagePath { get; set; } = "";

    [LoadColumn(1)]
    public string Label { get; set; } = "";
}
