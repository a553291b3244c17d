// A NuGet consumer of Microsoft.ML.BootMae, built and run by PackageConsumptionTests against a freshly packed
// package. It uses only the public API and prints one line per step; the test checks the lines and the exit code.
using Microsoft.ML;
using Microsoft.ML.BootMae;
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

// 3. Torch through the package: a random tiny encoder, saved and loaded back (loads libtorch and LibTorchSharp,
//    which on Debian 12 / Ubuntu 22.04 needs the library's runtime native-load fix).
var architecture = BootMaeArchitecture.Tiny28 with
{
    EmbedDim = 32, Depth = 2, Heads = 2, RegressorDim = 32, RegressorHeads = 2, PredictorHeads = 2, DecoderDepth = 1,
    DeepBlock = 1,
};
var encoderPath = Path.Combine(work, "encoder.bootmae");
using (var encoder = BootMaeEncoder.CreateRandom(architecture, seed: 7))
{
    encoder.Save(encoderPath);
}

using var loaded = BootMaeEncoder.Load(encoderPath);
Console.WriteLine($"encoder round trip: D={loaded.EmbeddingDim}, depth={loaded.Architecture.Depth}, {new FileInfo(encoderPath).Length} bytes");

// 4. The torch runtime computes on ML.NET's pixels (mean intensity of the first image, both ways).
using var first = TorchSharp.torch.tensor(vectors[0]);
var torchMean = first.mean().item<float>();
Console.WriteLine($"torch mean: {torchMean:F4} (ML.NET {vectors[0].Average():F4})");

foreach (var line in BootMaeRuntime.PreparationLog)
{
    Console.WriteLine($"native: {line}");
}

Console.WriteLine("BOOTMAE-CONSUMER-OK");
return 0;

internal sealed class ImageRow
{
    [LoadColumn(0)]
    public string ImagePath { get; set; } = "";

    [LoadColumn(1)]
    public string Label { get; set; } = "";
}
