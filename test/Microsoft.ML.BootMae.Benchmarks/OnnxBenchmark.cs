using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Benchmarks;

/// <summary>
/// Featurization speed of one encoder served two ways, side by side in one process: TorchSharp (the path of
/// <c>BootMaeFeaturize</c>, fp32) and ONNX Runtime on the graph <see cref="BootMaeEncoder.ExportOnnx"/> writes, at batch 1
/// and batch 64, with the same number of threads. Prints one JSON line per measurement and a Markdown table.
/// </summary>
internal static class OnnxBenchmark
{
    public static void Run(Arguments arguments)
    {
        var a = arguments.Architecture;
        int threads = arguments.Threads ?? Environment.ProcessorCount;
        set_num_threads(threads);
        using var encoder = BootMaeEncoder.CreateRandom(a, seed: 1);
        var path = Path.Combine(Path.GetTempPath(), $"bootmae-bench-{Guid.NewGuid():N}.onnx");
        encoder.ExportOnnx(path);
        try
        {
            using var options = new SessionOptions { IntraOpNumThreads = threads, InterOpNumThreads = 1, GraphOptimizationLevel = GraphOptimizationLevel.ORT_ENABLE_ALL };
            using var session = new InferenceSession(path, options);
            var rows = new List<(int Batch, double Torch, double Onnx, float MaxDiff)>();
            foreach (int batch in new[] { 1, 64 })
            {
                var random = new Random(batch);
                // ONNX takes 0..255 RGB; TorchSharp's Embed takes the [0, 1] planes ImageDecoder makes of the same pixels.
                var rgb = new float[batch * 3 * a.ImageSize * a.ImageSize];
                int plane = a.ImageSize * a.ImageSize;
                for (int i = 0; i < batch * plane; i++)
                {
                    float v = random.Next(256);
                    int image = i / plane, offset = i % plane;
                    for (int c = 0; c < 3; c++)
                    {
                        rgb[(image * 3 * plane) + (c * plane) + offset] = v;
                    }
                }

                var pixels01 = a.Channels == 3
                    ? rgb.Select(v => v * (1f / 255f)).ToArray()
                    : Enumerable.Range(0, batch * plane).Select(i => rgb[(i / plane * 3 * plane) + (i % plane)] * (1f / 255f)).ToArray();
                var input = new[] { NamedOnnxValue.CreateFromTensor("pixels", new DenseTensor<float>(rgb, new[] { batch, 3, a.ImageSize, a.ImageSize })) };
                float[] torchOut = [];
                float[] onnxOut = [];
                double torch = Measure(batch, () => torchOut = encoder.Embed(pixels01, batch, BootMaePooling.Mean, a.Depth - 1, BootMaePrecision.Float32));
                double onnx = Measure(batch, () =>
                {
                    using var results = session.Run(input);
                    onnxOut = results.First().AsTensor<float>().ToArray();
                });
                float maxDiff = torchOut.Zip(onnxOut, (x, y) => Math.Abs(x - y)).Max();
                rows.Add((batch, torch, onnx, maxDiff));
                Console.WriteLine(JsonSerializer.Serialize(new
                {
                    benchmark = "featurize", preset = arguments.Preset, batch, threads, torchsharp_images_per_s = Math.Round(torch, 1),
                    onnxruntime_images_per_s = Math.Round(onnx, 1), max_abs_diff = maxDiff, precision = "fp32",
                    bf16_fast = Training.TorchDevices.HasFastBFloat16(CPU),
                }));
            }

            Console.WriteLine();
            Console.WriteLine($"| batch | TorchSharp (images/s) | ONNX Runtime (images/s) | ONNX / TorchSharp | max abs diff |");
            Console.WriteLine("| --: | --: | --: | --: | --: |");
            foreach (var (batch, torch, onnx, diff) in rows)
            {
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"| {batch} | {torch:F0} | {onnx:F0} | {onnx / torch:F2}× | {diff:E1} |"));
            }

            Console.WriteLine($"{arguments.Preset} ({BootMaeEncoder.Describe(a)}), fp32, {threads} threads, CPU: {CpuName()}");
        }
        finally
        {
            File.Delete(path);
        }
    }

    // Images per second: median of timed rounds of about half a second each, after a warm-up.
    private static double Measure(int batch, Action run)
    {
        for (int i = 0; i < 3; i++)
        {
            run();
        }

        var watch = Stopwatch.StartNew();
        int calls = 0;
        while (watch.Elapsed.TotalSeconds < 0.3 || calls < 2)
        {
            run();
            calls++;
        }

        int perRound = Math.Max(1, (int)(calls / watch.Elapsed.TotalSeconds / 2));
        var rates = new List<double>();
        for (int round = 0; round < 5; round++)
        {
            var timer = Stopwatch.StartNew();
            for (int i = 0; i < perRound; i++)
            {
                run();
            }

            rates.Add(perRound * batch / timer.Elapsed.TotalSeconds);
        }

        rates.Sort();
        return rates[rates.Count / 2];
    }

    private static string CpuName()
    {
        try
        {
            var line = File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal));
            return line is null ? "unknown" : line[(line.IndexOf(':') + 1)..].Trim();
        }
        catch (IOException)
        {
            return "unknown";
        }
    }
}
