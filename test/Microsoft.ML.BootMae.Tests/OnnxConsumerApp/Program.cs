// Serves an exported BootMAE classifier the way a plain ML.NET app does: Microsoft.ML, Microsoft.ML.ImageAnalytics,
// Microsoft.ML.OnnxTransformer and Microsoft.ML.OnnxRuntime only (no BootMAE package, no TorchSharp). Built and run
// by OnnxConsumerAppTests, which compares what it prints with the TorchSharp predictions.
// Arguments: model.zip (saved by mlContext.Model.Save), classifier.onnx (for its metadata), images.tsv, expected.tsv.
using System.Globalization;
using System.Text.Json;
using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.OnnxRuntime;

if (args.Length != 4)
{
    Console.Error.WriteLine("usage: Consumer model.zip classifier.onnx images.tsv expected.tsv");
    return 2;
}

var ml = new MLContext();
var model = ml.Model.Load(args[0], out _);
var images = ml.Data.LoadFromTextFile<ImageRow>(args[2], hasHeader: true, separatorChar: '\t');
var scored = model.Transform(images);
var scores = scored.GetColumn<VBuffer<float>>("scores").Select(v => v.DenseValues().ToArray()).ToList();
var predictedColumn = scored.Schema["predicted"];
var predicted = predictedColumn.Type is VectorDataViewType
    ? scored.GetColumn<VBuffer<long>>("predicted").Select(v => v.DenseValues().Single()).ToList()
    : scored.GetColumn<long>("predicted").ToList();
Console.WriteLine($"scored: {scores.Count} images, scores {scored.Schema["scores"].Type}, predicted {predictedColumn.Type}");

// Class names travel in the ONNX model's metadata.
using (var session = new InferenceSession(args[1]))
{
    var names = JsonSerializer.Deserialize<string[]>(session.ModelMetadata.CustomMetadataMap["bootmae.classNames"])!;
    Console.WriteLine($"classes: {string.Join(", ", names)}; first image: {names[predicted[0]]}");
}

// The TorchSharp side's predictions: index, then the K probabilities.
var expected = File.ReadAllLines(args[3]).Skip(1).Select(l => l.Split('\t')).ToList();
if (expected.Count != scores.Count)
{
    Console.Error.WriteLine($"expected {expected.Count} rows, scored {scores.Count}");
    return 1;
}

double max = 0;
int mismatches = 0;
for (int i = 0; i < expected.Count; i++)
{
    if (long.Parse(expected[i][0], CultureInfo.InvariantCulture) != predicted[i])
    {
        mismatches++;
    }

    var probabilities = expected[i][1].Split(',').Select(s => float.Parse(s, CultureInfo.InvariantCulture)).ToArray();
    for (int k = 0; k < probabilities.Length; k++)
    {
        max = Math.Max(max, Math.Abs(probabilities[k] - scores[i][k]));
    }
}

Console.WriteLine($"predicted mismatches: {mismatches}; max |score difference|: {max.ToString("E2", CultureInfo.InvariantCulture)}");

// No libtorch in this process: the native libraries mapped now are the whole story.
var maps = File.ReadAllLines("/proc/self/maps");
var torch = maps.Where(l => l.Contains("libtorch", StringComparison.OrdinalIgnoreCase) || l.Contains("LibTorchSharp", StringComparison.OrdinalIgnoreCase)).ToList();
bool onnxRuntime = maps.Any(l => l.Contains("libonnxruntime", StringComparison.Ordinal));
Console.WriteLine($"libtorch mapped: {torch.Count > 0}; onnxruntime mapped: {onnxRuntime}");
if (mismatches > 0 || max > 1e-4 || torch.Count > 0 || !onnxRuntime)
{
    return 1;
}

Console.WriteLine("BOOTMAE-ONNX-CONSUMER-OK");
return 0;

internal sealed class ImageRow
{
    [LoadColumn(0)]
    public string ImagePath { get; set; } = string.Empty;
}
