using System.Diagnostics;
using System.Text.Json;
using Microsoft.ML.Data;

namespace Microsoft.ML.BootMae.Benchmarks;

/// <summary>
/// A multi-pass consumer on featurized data: <c>SdcaMaximumEntropy</c> fitted on the uncached output of
/// <c>BootMaeFeaturize</c> (LoadRawImageBytes over embedded Fashion-MNIST PNGs, a random encoder of the preset's
/// shape), then on the same view behind <c>mlContext.Data.Cache</c>. One JSON line per fit: the encoder forward
/// passes and images it ran, the passes the trainer made over the data, and the wall time.
/// </summary>
internal static class MultiPassBenchmark
{
    public static void Run(Arguments args)
    {
        var a = args.Architecture;
        if (!Presets.IsGreyscale28(a))
        {
            throw new ArgumentException($"multipass reads 28x28 greyscale Fashion-MNIST PNGs: use --preset {Presets.Names(Presets.Greyscale28)}, not {args.Preset}.");
        }

        var folder = Path.Combine(Path.GetTempPath(), $"bootmae-multipass-{Guid.NewGuid():N}");
        try
        {
            var files = FashionMnistSample.Materialize(folder, trainPerClass: (args.Images + 9) / 10, testPerClass: 1);
            var ml = new MLContext(seed: 1);
            var rows = ml.Data.TakeRows(ml.Data.LoadFromTextFile<Row>(files.TrainTsvPath, hasHeader: true, separatorChar: '\t'), args.Images);
            using var encoder = BootMaeEncoder.CreateRandom(a, seed: 1);
            var options = new BootMaeFeaturizingEstimator.Options { Encoder = encoder };
            using var model = ml.Transforms.LoadRawImageBytes("Image", files.Directory, "ImagePath").Append(ml.Transforms.BootMaeFeaturize(options)).Fit(rows);
            var featurizer = model.LastTransformer;
            bool fastBf16 = Training.TorchDevices.HasFastBFloat16(encoder.Device);

            // One featurization, untimed first (the first pass loads and warms the native code).
            _ = model.Transform(rows).GetColumn<float[]>("Features").Count();
            var watch = Stopwatch.StartNew();
            _ = model.Transform(rows).GetColumn<float[]>("Features").Count();
            double featurizeMs = watch.Elapsed.TotalMilliseconds;

            foreach (bool cached in new[] { false, true })
            {
                long passes = featurizer.ForwardPasses, images = featurizer.ImagesScored;
                var scored = model.Transform(rows);
                var data = new CountingView(cached ? ml.Data.Cache(scored) : scored);
                var pipeline = ml.Transforms.Conversion.MapValueToKey("Label")
                    .Append(ml.MulticlassClassification.Trainers.SdcaMaximumEntropy("Label", "Features", maximumNumberOfIterations: args.SdcaIterations > 0 ? args.SdcaIterations : null));
                watch.Restart();
                pipeline.Fit(data);
                double fitSeconds = watch.Elapsed.TotalSeconds;
                long imagesEncoded = featurizer.ImagesScored - images;
                Console.WriteLine(JsonSerializer.Serialize(new
                {
                    benchmark = "multipass", consumer = "SdcaMaximumEntropy", cached, preset = args.Preset, images = args.Images,
                    sdca_iterations = args.SdcaIterations, featurizer_batch = featurizer.BatchSize, data_passes = data.Cursors,
                    forward_passes = featurizer.ForwardPasses - passes, images_encoded = imagesEncoded,
                    featurizations = Math.Round((double)imagesEncoded / args.Images, 2), fit_s = Math.Round(fitSeconds, 2),
                    one_featurization_ms = Math.Round(featurizeMs, 1), precision = featurizer.Precision == BootMaePrecision.BFloat16 && fastBf16 ? "bf16" : "fp32",
                    bf16_fast = fastBf16, threads = TorchSharp.torch.get_num_threads(),
                }));
            }
        }
        finally
        {
            try
            {
                Directory.Delete(folder, recursive: true);
            }
            catch (IOException)
            {
                // Best effort.
            }
        }
    }

    private sealed class Row
    {
        [LoadColumn(0)]
        public string ImagePath { get; set; } = string.Empty;

        [LoadColumn(1)]
        public string Label { get; set; } = string.Empty;
    }

    /// <summary>Passes the view through unchanged, counting the cursors (passes) the consumer opens.</summary>
    private sealed class CountingView(IDataView inner) : IDataView
    {
        private int _cursors;

        public int Cursors => _cursors;

        public bool CanShuffle => inner.CanShuffle;

        public DataViewSchema Schema => inner.Schema;

        public long? GetRowCount() => inner.GetRowCount();

        public DataViewRowCursor GetRowCursor(IEnumerable<DataViewSchema.Column> columnsNeeded, Random? rand = null)
        {
            Interlocked.Increment(ref _cursors);
            return inner.GetRowCursor(columnsNeeded, rand);
        }

        public DataViewRowCursor[] GetRowCursorSet(IEnumerable<DataViewSchema.Column> columnsNeeded, int n, Random? rand = null)
        {
            Interlocked.Increment(ref _cursors);
            return inner.GetRowCursorSet(columnsNeeded, n, rand);
        }
    }
}
