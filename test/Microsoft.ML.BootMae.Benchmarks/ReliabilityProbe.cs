using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.Json;
using Microsoft.ML.Data;

namespace Microsoft.ML.BootMae.Benchmarks;

/// <summary>
/// Hidden command for the reliability tests (issue 10): runs the public API on hostile files inside a child process
/// that the test starts under a memory limit, and prints one JSON line per case: what was thrown (type and message),
/// the wall time and the peak resident set of that case.
/// <code>
/// reliability-probe CASE PATH [CASE PATH ...]
///   pretrain-strict FOLDER    BootMaePretrain on every file of FOLDER (LoadRawImageBytes), SkipBadImages false
///   pretrain-skip FOLDER      the same with SkipBadImages true
///   featurize FOLDER          BootMaeFeaturize(random encoder).Fit + Transform, read every row
///   featurize-uncapped FOLDER the same with MaxImagePixels = long.MaxValue (the control: no header check)
///   encoder FILE              BootMaeEncoder.Load
///   model FILE                LoadBootMae (model zip: encoder or classifier stage)
///   allocate MIB              touches MIB MiB of native memory (the control that the limit bites)
///   limit-address-space MIB   setrlimit(RLIMIT_AS) to the current address space plus MIB MiB, for the cases after it
///                             (where the test cannot create a memory cgroup; run with DOTNET_GCHeapHardLimit too)
///   save-loop FOLDER          SaveBootMae of a featurizer to FOLDER/model.zip once, prints "saved" with the SHA-256 of
///                             its features on FOLDER/images/*.png, then saves again and again (for a kill -9 mid-save)
/// </code>
/// </summary>
internal static class ReliabilityProbe
{
    internal const string Command = "reliability-probe";

    // 8x8 RGB, patch 4: every forward pass is trivial, so a case costs its checks and nothing else.
    private static readonly BootMaeArchitecture Tiny8 = new()
    {
        ImageSize = 8, PatchSize = 4, Channels = 3, EmbedDim = 16, Depth = 2, Heads = 2,
        RegressorDim = 16, RegressorHeads = 2, PredictorHeads = 2, DecoderDepth = 1,
    };

    public static int Run(string[] args)
    {
        BootMaeRuntime.EnsureTorchLoaded();
        TorchSharp.torch.set_num_threads(1);
        Emit(new Dictionary<string, object?> { ["case"] = "start", ["rssBytes"] = Status("VmRSS:"), ["vmBytes"] = Status("VmSize:") });
        for (int i = 1; i + 1 < args.Length; i += 2)
        {
            var (kind, path) = (args[i], args[i + 1]);
            if (kind == "save-loop")
            {
                SaveLoop(path);
                return 0;
            }

            ResetPeak();
            var watch = Stopwatch.StartNew();
            var line = new Dictionary<string, object?> { ["case"] = kind, ["path"] = path };
            try
            {
                line["detail"] = RunCase(kind, path);
                line["outcome"] = "ok";
            }
            catch (Exception ex)
            {
                line["outcome"] = "threw";
                line["type"] = ex.GetType().FullName;
                line["message"] = ex.Message;
                line["inner"] = ex.InnerException?.GetType().FullName;
            }

            line["ms"] = watch.ElapsedMilliseconds;
            line["peakRssBytes"] = Status("VmHWM:");
            Emit(line);
        }

        return 0;
    }

    private static string? RunCase(string kind, string path)
    {
        switch (kind)
        {
            case "pretrain-strict":
            case "pretrain-skip":
            {
                var ml = new MLContext(1);
                var skipped = new List<string>();
                ml.Log += (_, e) =>
                {
                    if (e.Message.Contains("skipped", StringComparison.Ordinal))
                    {
                        lock (skipped)
                        {
                            skipped.Add(e.Message);
                        }
                    }
                };
                var options = new BootMaePretrainingEstimator.Options
                {
                    Architecture = Tiny8, MaxEpochs = 1, BatchSize = 2, Device = BootMaeDevice.Cpu, Seed = 1, NumberOfThreads = 1,
                    SkipBadImages = kind == "pretrain-skip", Precision = BootMaePrecision.Float32,
                };
                var rows = Rows(ml, path);
                using var model = ml.Transforms.LoadRawImageBytes("Image", path, "ImagePath").Append(ml.Transforms.BootMaePretrain(options)).Fit(rows);
                return string.Join(" | ", skipped);
            }

            case "featurize":
            case "featurize-uncapped":
            {
                var ml = new MLContext(1);
                var rows = Rows(ml, path);
                var data = ml.Transforms.LoadRawImageBytes("Image", path, "ImagePath").Fit(rows).Transform(rows);
                using var encoder = BootMaeEncoder.CreateRandom(Tiny8, seed: 1);
                var options = new BootMaeFeaturizingEstimator.Options { Encoder = encoder, BatchSize = 2 };
                if (kind == "featurize-uncapped")
                {
                    options.MaxImagePixels = long.MaxValue;
                }

                using var model = ml.Transforms.BootMaeFeaturize(options).Fit(data);
                return $"{model.Transform(data).GetColumn<VBuffer<float>>("Features").Count()} rows";
            }

            case "encoder":
            {
                using var encoder = BootMaeEncoder.Load(path);
                return encoder.Architecture.ToString();
            }

            case "model":
            {
                var model = new MLContext(1).Model.LoadBootMae(path, out _);
                (model as IDisposable)?.Dispose();
                return model.GetType().Name;
            }

            case "limit-address-space":
            {
                ulong limit = (ulong)Status("VmSize:")!.Value + (ulong.Parse(path, CultureInfo.InvariantCulture) << 20);
                var value = new RLimit { Current = limit, Maximum = limit };
                if (setrlimit(9 /* RLIMIT_AS */, ref value) != 0)
                {
                    throw new InvalidOperationException($"setrlimit failed: errno {Marshal.GetLastPInvokeError()}");
                }

                return $"RLIMIT_AS {limit >> 20} MiB";
            }

            case "allocate":
            {
                long bytes = long.Parse(path, CultureInfo.InvariantCulture) << 20;
                var memory = Marshal.AllocHGlobal((nint)bytes);
                try
                {
                    for (long offset = 0; offset < bytes; offset += 4096)
                    {
                        Marshal.WriteByte(memory + (nint)offset, 1);
                    }
                }
                finally
                {
                    Marshal.FreeHGlobal(memory);
                }

                return $"{bytes >> 20} MiB touched";
            }

            default:
                throw new ArgumentException($"unknown reliability-probe case '{kind}'");
        }
    }

    private static void SaveLoop(string folder)
    {
        var ml = new MLContext(1);
        var (data, _) = ColourImages(ml, folder);
        using var encoder = BootMaeEncoder.CreateRandom(BootMaeArchitecture.Tiny28 with { Channels = 3 }, seed: 5);
        using var model = ml.Transforms.BootMaeFeaturize(encoder).Fit(data);
        var path = Path.Combine(folder, "model.zip");
        ml.Model.SaveBootMae(model, data.Schema, path);
        Emit(new Dictionary<string, object?> { ["case"] = "saved", ["path"] = path, ["features"] = FeatureHash(model.Transform(data)) });
        for (long round = 0; ; round++)
        {
            ml.Model.SaveBootMae(model, data.Schema, path);
        }
    }

    // Four small colour PNGs in FOLDER/images (written once), as an ImagePath/Image data view.
    private static (IDataView Data, string Images) ColourImages(MLContext ml, string folder)
    {
        var images = Path.Combine(folder, "images");
        Directory.CreateDirectory(images);
        for (int i = 0; i < 4; i++)
        {
            var file = Path.Combine(images, $"c{i}.png");
            if (!File.Exists(file))
            {
                using var bitmap = new SkiaSharp.SKBitmap(16, 16);
                bitmap.Erase(new SkiaSharp.SKColor((byte)(40 * i), (byte)(200 - (30 * i)), 90));
                bitmap.SetPixel(i, 15 - i, SkiaSharp.SKColors.White);
                using var png = bitmap.Encode(SkiaSharp.SKEncodedImageFormat.Png, 100);
                File.WriteAllBytes(file, png.ToArray());
            }
        }

        var rows = Rows(ml, images);
        return (ml.Transforms.LoadRawImageBytes("Image", images, "ImagePath").Fit(rows).Transform(rows), images);
    }

    /// <summary>SHA-256 of the Features column, row after row (also computed by the tests to compare predictions).</summary>
    internal static string FeatureHash(IDataView scored)
    {
        using var hash = System.Security.Cryptography.IncrementalHash.CreateHash(System.Security.Cryptography.HashAlgorithmName.SHA256);
        foreach (var row in scored.GetColumn<VBuffer<float>>("Features"))
        {
            hash.AppendData(MemoryMarshal.AsBytes(row.DenseValues().ToArray().AsSpan()));
        }

        return Convert.ToHexString(hash.GetHashAndReset());
    }

    private static IDataView Rows(MLContext ml, string folder)
        => ml.Data.LoadFromEnumerable(Directory.GetFiles(folder).Order(StringComparer.Ordinal)
            .Select(f => new ImageRow { ImagePath = Path.GetFileName(f) }).ToArray());

    private static void Emit(Dictionary<string, object?> line) => Console.Out.WriteLine(JsonSerializer.Serialize(line));

    // VmHWM is the process's peak resident set; writing 5 to clear_refs resets it, so each case reports its own peak.
    private static void ResetPeak()
    {
        try
        {
            File.WriteAllText("/proc/self/clear_refs", "5");
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            // Not Linux, or not allowed: the peak then covers the process so far.
        }
    }

    private static long? Status(string field)
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/self/status"))
            {
                if (line.StartsWith(field, StringComparison.Ordinal))
                {
                    return long.Parse(line.AsSpan(field.Length).Trim().TrimEnd("kB").Trim(), CultureInfo.InvariantCulture) * 1024;
                }
            }
        }
        catch (IOException)
        {
            // No /proc here.
        }

        return null;
    }

    [DllImport("libc", SetLastError = true)]
    private static extern int setrlimit(int resource, ref RLimit limit);

    [StructLayout(LayoutKind.Sequential)]
    private struct RLimit
    {
        public ulong Current;
        public ulong Maximum;
    }

    private sealed class ImageRow
    {
        public string ImagePath { get; set; } = string.Empty;
    }
}
