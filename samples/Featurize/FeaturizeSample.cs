using System.Diagnostics;
using System.Globalization;
using Microsoft.ML;
using Microsoft.ML.BootMae;
using Microsoft.ML.Data;
using SkiaSharp;

namespace BootMae.Samples.Featurize;

/// <summary>Settings of the featurization sample.</summary>
public sealed record FeaturizeSettings
{
    /// <summary>All 10,000 training and 2,000 test images; two pretraining epochs when no encoder is given.</summary>
    public static FeaturizeSettings Default { get; } = new();

    /// <summary>A smoke run on 100 training and 30 test images per class.</summary>
    public static FeaturizeSettings Quick { get; } = new()
    {
        TrainPerClass = 100, TestPerClass = 30, PretrainEpochs = 1, OutputDirectory = Path.Combine("out", "featurize-quick"),
    };

    /// <summary>A saved encoder; <c>null</c> pretrains one first.</summary>
    public string? EncoderPath { get; init; }

    /// <summary>Network shape when pretraining here.</summary>
    public BootMaeArchitecture Architecture { get; init; } = BootMaeArchitecture.Small28;

    /// <summary>Pretraining epochs when no encoder is given.</summary>
    public int PretrainEpochs { get; init; } = 2;

    /// <summary>Training images per class (at most 1,000).</summary>
    public int TrainPerClass { get; init; } = 1000;

    /// <summary>Test images per class (at most 200).</summary>
    public int TestPerClass { get; init; } = 200;

    /// <summary>Query images of the similarity search.</summary>
    public int Queries { get; init; } = 4;

    /// <summary>Neighbours shown per query.</summary>
    public int Neighbours { get; init; } = 5;

    /// <summary>Folder for data and pictures.</summary>
    public string OutputDirectory { get; init; } = Path.Combine("out", "featurize");

    /// <summary>Seed of everything.</summary>
    public int Seed { get; init; } = 1;

    /// <summary>Continue pretraining from the checkpoint in <c>OutputDirectory/checkpoints</c> (a run stopped with Ctrl+C leaves one).</summary>
    public bool Resume { get; init; }
}

/// <summary>What the featurization sample measured.</summary>
/// <param name="Accuracy">Test accuracy of the ML.NET classifier on the embeddings.</param>
/// <param name="MacroAccuracy">Its macro accuracy.</param>
/// <param name="NeighbourLabelAgreement">Share of the queries' neighbours that have the query's class.</param>
/// <param name="PicturePath">The PNG of queries and neighbours.</param>
public sealed record FeaturizeResult(double Accuracy, double MacroAccuracy, double NeighbourLabelAgreement, string PicturePath);

/// <summary>Pretrained encoder → BootMaeFeaturize → LbfgsMaximumEntropy, plus nearest-neighbour image search.</summary>
public static class FeaturizeSample
{
    /// <summary>Runs the sample; progress and results go to <paramref name="output"/>.</summary>
    /// <param name="settings">What to run.</param>
    /// <param name="output">Where progress and results go.</param>
    /// <param name="cancellation">Stops pretraining before the next step (Ctrl+C); its checkpoint is kept.</param>
    /// <exception cref="OperationCanceledException">Cancelled; the message says where the checkpoint is.</exception>
    public static FeaturizeResult Run(FeaturizeSettings settings, TextWriter output, CancellationToken cancellation = default)
    {
        ArgumentNullException.ThrowIfNull(settings);
        var total = Stopwatch.StartNew();
        var outputDirectory = Path.GetFullPath(settings.OutputDirectory);
        var files = FashionMnistSample.Materialize(Path.Combine(outputDirectory, "data"), settings.TrainPerClass, settings.TestPerClass);
        var ml = new MLContext(settings.Seed);
        var train = ml.Data.LoadFromTextFile<ImageRow>(files.TrainTsvPath, hasHeader: true, separatorChar: '\t');
        var test = ml.Data.LoadFromTextFile<ImageRow>(files.TestTsvPath, hasHeader: true, separatorChar: '\t');
        output.WriteLine($"Fashion-MNIST: {files.TrainCount} training and {files.TestCount} test images.");

        using var encoder = LoadOrPretrain(ml, settings, files, train, output, cancellation);

        // The encoder turns each image into a D-dimensional vector; any ML.NET trainer can use it.
        var clock = Stopwatch.StartNew();
        var featurize = ml.Transforms.LoadRawImageBytes("Image", files.Directory, nameof(ImageRow.ImagePath))
            .Append(ml.Transforms.BootMaeFeaturize(encoder, outputColumnName: "Features"));
        var pipeline = featurize
            .AppendCacheCheckpoint(ml) // the trainer passes over the data many times; embed each image once
            .Append(ml.Transforms.Conversion.MapValueToKey("Label"))
            .Append(ml.MulticlassClassification.Trainers.LbfgsMaximumEntropy("Label", "Features"))
            .Append(ml.Transforms.Conversion.MapKeyToValue("PredictedLabel"));
        output.WriteLine();
        output.WriteLine($"BootMaeFeaturize ({encoder.EmbeddingDim}-d embeddings) -> LbfgsMaximumEntropy on {files.TrainCount} labelled images");
        using var model = pipeline.Fit(train);
        var metrics = ml.MulticlassClassification.Evaluate(model.Transform(test));
        output.WriteLine(string.Format(CultureInfo.InvariantCulture, "  test accuracy {0:P1}, macro accuracy {1:P1}, log-loss {2:F3} ({3})",
            metrics.MicroAccuracy, metrics.MacroAccuracy, metrics.LogLoss, TrainingProgress.Clock(clock.Elapsed)));

        // Nearest neighbours: cosine similarity between the embeddings of the test images.
        using var featurizer = featurize.Fit(test);
        var embeddings = CenterAndNormalize(featurizer.Transform(test).GetColumn<float[]>("Features").ToArray());
        var rows = ImageRow.ReadTsv(files.TestTsvPath);
        var queries = rows.Select((row, index) => (row, index)).GroupBy(x => x.row.Label).Take(settings.Queries).Select(g => g.First().index).ToArray();
        output.WriteLine();
        output.WriteLine($"Images most like each query (top {settings.Neighbours} of {rows.Count} test images by cosine similarity of centred embeddings):");
        var matches = new List<(int Query, (int Index, float Similarity)[] Neighbours)>();
        int agreeing = 0;
        foreach (var query in queries)
        {
            var neighbours = embeddings.Select((e, i) => (Index: i, Similarity: Dot(embeddings[query], e)))
                .Where(x => x.Index != query).OrderByDescending(x => x.Similarity).Take(settings.Neighbours).ToArray();
            matches.Add((query, neighbours));
            agreeing += neighbours.Count(n => rows[n.Index].Label == rows[query].Label);
            output.WriteLine($"  {rows[query].Label,-12} -> " + string.Join(", ", neighbours.Select(n =>
                string.Format(CultureInfo.InvariantCulture, "{0} ({1:F2})", rows[n.Index].Label, n.Similarity))));
        }

        var picture = NeighbourGrid.Write(Path.Combine(outputDirectory, "neighbours.png"), files.Directory, rows, matches);
        double agreement = (double)agreeing / (queries.Length * settings.Neighbours);
        output.WriteLine(string.Format(CultureInfo.InvariantCulture, "  {0:P0} of the neighbours share the query's class. Picture: {1}", agreement, picture));
        output.WriteLine($"Done in {TrainingProgress.Clock(total.Elapsed)}.");
        return new FeaturizeResult(metrics.MicroAccuracy, metrics.MacroAccuracy, agreement, picture);
    }

    private static BootMaeEncoder LoadOrPretrain(MLContext ml, FeaturizeSettings settings, FashionMnistFiles files, IDataView train, TextWriter output, CancellationToken cancellation)
    {
        if (settings.EncoderPath is { } path)
        {
            var loaded = BootMaeEncoder.Load(path);
            output.WriteLine($"Encoder: {Path.GetFullPath(path)} ({SampleArchitectures.Describe(loaded.Architecture)})");
            return loaded;
        }

        output.WriteLine($"No --encoder given: pretraining {SampleArchitectures.Describe(settings.Architecture)} for {settings.PretrainEpochs} epochs (labels unused).");
        var progress = new TrainingProgress(output, "pretrain", settings.PretrainEpochs, 64);
        var checkpoints = Path.Combine(Path.GetFullPath(settings.OutputDirectory), "checkpoints");
        var pretrainer = ml.Transforms.LoadRawImageBytes("Image", files.Directory, nameof(ImageRow.ImagePath))
            .Append(ml.Transforms.BootMaePretrain(new BootMaePretrainingEstimator.Options
            {
                Architecture = settings.Architecture, MaxEpochs = settings.PretrainEpochs, BatchSize = 64, Seed = settings.Seed,
                MetricsCallback = progress.Report, LogEveryNSteps = 5,
                CancellationToken = cancellation, CheckpointDirectory = checkpoints, ResumeFromCheckpoint = settings.Resume,
            }));
        using var pretrained = progress.Run(() => SampleCommandLine.ExplainCancellation(() => pretrainer.Fit(train),
            () => $"Pretraining stopped; {SampleCommandLine.DescribeCheckpoint(checkpoints)}: run again with --resume to continue from it."));
        return pretrained.LastTransformer.Encoder.Clone(); // the transformer owns (and disposes) its encoder
    }

    // Mean-pooled embeddings share a large common component: without removing it every cosine is close to 1.
    private static float[][] CenterAndNormalize(float[][] embeddings)
    {
        var mean = new float[embeddings[0].Length];
        foreach (var e in embeddings)
        {
            for (int i = 0; i < mean.Length; i++)
            {
                mean[i] += e[i] / embeddings.Length;
            }
        }

        return embeddings.Select(e =>
        {
            var centered = e.Select((x, i) => x - mean[i]).ToArray();
            var norm = MathF.Max(MathF.Sqrt(Dot(centered, centered)), 1e-12f);
            return centered.Select(x => x / norm).ToArray();
        }).ToArray();
    }

    private static float Dot(float[] a, float[] b)
    {
        float sum = 0;
        for (int i = 0; i < a.Length; i++)
        {
            sum += a[i] * b[i];
        }

        return sum;
    }
}

/// <summary>Draws each query image followed by its nearest neighbours, labelled with class and similarity.</summary>
internal static class NeighbourGrid
{
    private const int Tile = 84;
    private const int Gap = 10;
    private const int Caption = 34;

    public static string Write(string path, string imageFolder, IReadOnlyList<ImageRow> rows, IReadOnlyList<(int Query, (int Index, float Similarity)[] Neighbours)> matches)
    {
        int columns = 1 + matches.Max(m => m.Neighbours.Length);
        int width = Gap + (columns * (Tile + Gap)) + Gap;
        int height = 40 + (matches.Count * (Tile + Caption + Gap));
        using var surface = SKSurface.Create(new SKImageInfo(width, height));
        var canvas = surface.Canvas;
        canvas.Clear(SKColors.White);
        using var typeface = SKTypeface.FromFamilyName("DejaVu Sans") ?? SKTypeface.Default;
        using var title = new SKPaint { Color = SKColors.Black, IsAntialias = true, TextSize = 16, Typeface = typeface };
        using var text = new SKPaint { Color = new SKColor(0x22, 0x22, 0x22), IsAntialias = true, TextSize = 11, Typeface = typeface };
        using var pixels = new SKPaint { FilterQuality = SKFilterQuality.None };
        using var frame = new SKPaint { Color = new SKColor(0xD0, 0x30, 0x30), Style = SKPaintStyle.Stroke, StrokeWidth = 3 };
        const string heading = "Query (red frame) and its nearest neighbours by embedding cosine similarity";
        while (title.MeasureText(heading) > width - (2 * Gap) && title.TextSize > 8)
        {
            title.TextSize -= 0.5f;
        }

        canvas.DrawText(heading, Gap, 26, title);
        for (int r = 0; r < matches.Count; r++)
        {
            float top = 40 + (r * (Tile + Caption + Gap));
            var (query, neighbours) = matches[r];
            var cells = new[] { (Index: query, Caption2: "query") }
                .Concat(neighbours.Select(n => (n.Index, Caption2: n.Similarity.ToString("F2", CultureInfo.InvariantCulture))));
            int c = 0;
            foreach (var (index, caption) in cells)
            {
                float left = Gap + (c * (Tile + Gap));
                var target = new SKRect(left, top, left + Tile, top + Tile);
                using (var bitmap = SKBitmap.Decode(Path.Combine(imageFolder, rows[index].ImagePath)))
                {
                    canvas.DrawBitmap(bitmap, target, pixels);
                }

                if (c == 0)
                {
                    canvas.DrawRect(target, frame);
                }

                canvas.DrawText(rows[index].Label, left, top + Tile + 14, text);
                canvas.DrawText(caption, left, top + Tile + 28, text);
                c++;
            }
        }

        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        using var png = surface.Snapshot().Encode(SKEncodedImageFormat.Png, 100);
        using var stream = File.Create(path);
        png.SaveTo(stream);
        return path;
    }
}
