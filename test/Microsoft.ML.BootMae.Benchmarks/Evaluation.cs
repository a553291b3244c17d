using System.Diagnostics;
using System.Globalization;
using System.IO.Compression;
using System.Text;
using System.Text.Json;
using Microsoft.ML;
using Microsoft.ML.BootMae.Training;
using Microsoft.ML.Data;

namespace Microsoft.ML.BootMae.Benchmarks;

/// <summary>
/// The evaluation of issue 9: what pretraining buys on real data. For each seed it pretrains BootMAE and MAE for the
/// same wall-time budget, then compares them with a random encoder and raw pixels: a linear probe on every block, and
/// fine-tuning with few labels against training from scratch at equal fine-tune epochs and at equal total steps.
/// </summary>
internal static class Evaluation
{
    private const int ProbePerClass = 200;

    public static void Run(EvaluationArguments args)
    {
        if (args.FromJson is { } inputs)
        {
            // Only the table: rows of earlier runs (for example seeds run in parallel processes), merged.
            var merged = inputs.SelectMany(File.ReadAllLines).Where(l => l.Length > 0).Select(l => JsonSerializer.Deserialize<EvaluationRow>(l)!).ToList();
            args.Seeds = merged.Select(r => r.seed).Distinct().Order().ToArray();
            if (args.PlotsFolder is { } charts)
            {
                EvaluationPlots.Write(merged, charts);
                if (args.MarkdownPath is null)
                {
                    return;
                }
            }

            File.WriteAllText(args.MarkdownPath ?? throw new ArgumentException("--from-json needs --md."), Markdown(args, EvaluationData.Load(args.UnlabelledLimit, args.TestLimit, args.Validation), merged));
            Console.WriteLine($"Results table ({merged.Count} rows): {args.MarkdownPath}");
            return;
        }

        var data = EvaluationData.Load(args.UnlabelledLimit, args.TestLimit, args.Validation);
        Console.WriteLine($"Data: {data.Description}; {data.TrainCount} unlabelled images, {data.TestCount} {data.ScoredSet} images. CPU: {CpuModel()}; pretraining precision: {PrecisionNote(args)}; {BootMaeEncoder.Describe(args.Architecture)}.");
        var rows = new List<EvaluationRow>();
        void Add(EvaluationRow row)
        {
            rows.Add(row);
            Console.WriteLine(JsonSerializer.Serialize(row));
            if (args.JsonPath is not null)
            {
                File.AppendAllText(args.JsonPath, JsonSerializer.Serialize(row) + Environment.NewLine);
            }
        }

        foreach (int seed in args.Seeds)
        {
            if (args.Methods.Contains("pixels"))
            {
                var pixels = LinearModel(data, seed, null, args.TunedProbe);
                Add(new EvaluationRow(seed, "raw pixels", "linear probe", ProbePerClass * 10, 0, 0, 0, pixels.Test));
                Console.WriteLine($"  raw pixels probe: {Describe(pixels)}");
            }

            var encoders = new List<(string Method, BootMaeEncoder Encoder, long Steps, double Seconds)>();
            if (args.Methods.Contains("random"))
            {
                encoders.Add(("random init", RandomEncoder(args, seed), 0, 0));
            }

            foreach (var mode in new[] { ("bootmae", BootMaeMode.BootMae), ("mae", BootMaeMode.Mae) })
            {
                if (args.Methods.Contains(mode.Item1))
                {
                    var (encoder, steps, seconds) = Pretrain(args, data, mode.Item2, seed);
                    encoders.Add((mode.Item2 == BootMaeMode.Mae ? "MAE" : "BootMAE", encoder, steps, seconds));
                }
            }

            if (args.LoadEncoder is { } path)
            {
                // Saved as "<method>-seed<seed>-<steps>.bootmae" by --save-encoders.
                string name = Path.GetFileNameWithoutExtension(path);
                encoders.Add((name.Contains("-seed", StringComparison.Ordinal) ? name[..name.IndexOf("-seed", StringComparison.Ordinal)] : name,
                    BootMaeEncoder.Load(path), args.LoadedSteps, args.LoadedSeconds));
            }

            if (args.SaveEncoders is { } folder)
            {
                Directory.CreateDirectory(folder);
                foreach (var (method, encoder, steps, _) in encoders.Where(e => e.Steps > 0))
                {
                    encoder.Save(Path.Combine(folder, $"{method.Replace(' ', '-')}-seed{seed}-{steps}.bootmae"));
                }
            }

            long maxPretrainSteps = encoders.Count == 0 ? 0 : encoders.Max(e => e.Steps);
            foreach (var (method, encoder, steps, seconds) in encoders)
            {
                if (args.Probe)
                {
                    var perBlock = Enumerable.Range(0, encoder.Architecture.Depth).Select(block => LinearModel(data, seed, (encoder, block), args.TunedProbe)).ToArray();
                    // Tuned, the best block is the one that scores best on the held-out labelled images, not on the test set.
                    int best = Array.IndexOf(perBlock, perBlock.MaxBy(p => args.TunedProbe ? p.HeldOut : p.Test));
                    Add(new EvaluationRow(seed, method, $"linear probe, best block ({best + 1} of {perBlock.Length})", ProbePerClass * 10, steps, seconds, 0, perBlock[best].Test));
                    Add(new EvaluationRow(seed, method, "linear probe, last block", ProbePerClass * 10, steps, seconds, 0, perBlock[^1].Test));
                    for (int block = 0; block < perBlock.Length; block++)
                    {
                        Console.WriteLine($"  {method} probe, block {block + 1}: {Describe(perBlock[block])}");
                    }
                }

                foreach (var (labels, epochs) in args.FineTune)
                {
                    bool scratch = steps == 0;
                    var ft = FineTune(args, data, encoder, seed, labels, epochs, maxSteps: null, pretrained: !scratch);
                    Add(new EvaluationRow(seed, method, scratch ? "from scratch, equal fine-tune epochs" : "fine-tune", labels, steps, seconds, ft.Steps, ft.Accuracy));
                    if (scratch && maxPretrainSteps > 0)
                    {
                        // The same supervised run given the pretraining's steps as extra supervised steps.
                        long total = maxPretrainSteps + ft.Steps;
                        var longer = FineTune(args, data, encoder, seed, labels, (int)Math.Ceiling((double)total / ft.StepsPerEpoch), maxSteps: total, pretrained: false);
                        Add(new EvaluationRow(seed, method, "from scratch, equal total steps", labels, 0, 0, longer.Steps, longer.Accuracy));
                    }
                }

                encoder.Dispose();
            }
        }

        if (args.PlotsFolder is not null)
        {
            EvaluationPlots.Write(rows, args.PlotsFolder);
        }

        if (args.MarkdownPath is not null)
        {
            File.WriteAllText(args.MarkdownPath, Markdown(args, data, rows));
            Console.WriteLine($"Results table: {args.MarkdownPath}");
        }
    }

    // The initialisation the classification trainer uses when it is given no encoder.
    private static BootMaeEncoder RandomEncoder(EvaluationArguments args, int seed) => BootMaeEncoder.CreateRandom(args.Architecture, seed);

    private static BootMaePretrainerSettings PretrainSettings(EvaluationArguments args, BootMaeMode mode, int seed)
    {
        var s = args.Official ? Official() : new BootMaePretrainerSettings();
        s.Mode = mode;
        s.BatchSize = args.PretrainBatch;
        s.MaxEpochs = 1_000_000;
        s.Seed = seed;
        s.Device = BootMaeDevice.Cpu;
        s.LogEveryNSteps = 1_000_000;
        s.LearningRate = args.LearningRate ?? s.LearningRate;
        s.FeatureTargetNormalization = args.FeatureNorm ?? s.FeatureTargetNormalization;
        s.EmaMomentumFloor = args.EmaFloor ?? s.EmaMomentumFloor;
        s.PixelTargetEpsilon = args.PixelEpsilon ?? s.PixelTargetEpsilon;
        s.NormPixTarget = args.NormPix ?? s.NormPixTarget;
        s.Augment = args.Augment ?? s.Augment;
        s.Target = args.Target ?? s.Target;
        s.InjectRegressor = args.Inject ?? s.InjectRegressor;
        s.InjectPredictor = args.Inject ?? s.InjectPredictor;
        s.Masking = args.Masking ?? s.Masking;
        s.TeacherFraction = args.TeacherFraction ?? s.TeacherFraction;
        s.MaskRatio = args.MaskRatio ?? s.MaskRatio;
        s.FeatureLossWeight = args.FeatureWeight ?? s.FeatureLossWeight;
        s.Precision = args.Precision ?? s.Precision;
        return s;
    }

    // The published recipe, for comparison (ViT-B values where they do not depend on the data).
    private static BootMaePretrainerSettings Official() => new()
    {
        LearningRate = 1.5e-4, FeatureTargetNormalization = BootMaeFeatureTargetNormalization.LayerNorm,
        EmaMomentumStart = 0.999, EmaMomentumMid = 0.9999, EmaMomentumEnd = 0.9999, PixelTargetEpsilon = 1e-5,
    };

    private static (BootMaeEncoder Encoder, long Steps, double Seconds) Pretrain(EvaluationArguments args, EvaluationData data, BootMaeMode mode, int seed)
    {
        var settings = PretrainSettings(args, mode, seed);
        long steps = (mode == BootMaeMode.Mae ? args.MaePretrainSteps : null) ?? args.PretrainSteps ?? 0;
        if (steps == 0)
        {
            // Equal wall time: time a few steps of this mode, then plan the run (its schedules need the step count).
            var probe = PretrainSettings(args, mode, seed);
            probe.MaxSteps = 6;
            var stamps = new List<double>();
            var clock = Stopwatch.StartNew();
            probe.LogEveryNSteps = 1;
            new BootMaePretrainer(args.Architecture, probe).Train(data.Unlabelled(seed), _ => stamps.Add(clock.Elapsed.TotalSeconds)).Dispose();
            double perStep = (stamps[^1] - stamps[1]) / (stamps.Count - 2);
            steps = Math.Max(10, (long)(args.PretrainMinutes * 60 / perStep));
            Console.WriteLine($"  {mode}: {perStep * 1000:F0} ms per step → {steps} steps for {args.PretrainMinutes} minutes.");
        }

        settings.MaxSteps = steps;
        BootMaeTrainingMetrics? last = null;
        var watch = Stopwatch.StartNew();
        var encoder = new BootMaePretrainer(args.Architecture, settings).Train(data.Unlabelled(seed), m =>
        {
            last = m;
            if (m.IsEpochEnd || m.Step == m.TotalSteps)
            {
                Console.WriteLine($"    {mode} seed {seed}: {m}");
            }
        }, line =>
        {
            if (line.StartsWith("Warning", StringComparison.Ordinal))
            {
                Console.WriteLine("    " + line);
            }
        });
        Console.WriteLine($"  {mode} seed {seed}: {steps} steps in {watch.Elapsed.TotalMinutes:F1} min; last report: {last}");
        return (encoder, steps, watch.Elapsed.TotalSeconds);
    }

    private static (double Accuracy, long Steps, long StepsPerEpoch) FineTune(EvaluationArguments args, EvaluationData data, BootMaeEncoder encoder, int seed,
        int labelsCount, int epochs, long? maxSteps, bool pretrained)
    {
        var (pixels, labels) = data.Labelled(labelsCount / 10, seed);
        int batch = Math.Min(args.FineTuneBatch, Math.Max(10, labelsCount / 5));
        long stepsPerEpoch = (labels.Length + batch - 1) / batch;
        var settings = new FineTuneSettings
        {
            MaxEpochs = epochs, BatchSize = batch, Seed = seed, Device = BootMaeDevice.Cpu, LogEveryNSteps = 0, Augment = args.FineTuneAugment,
            LearningRate = pretrained ? args.FineTuneLearningRate ?? 1e-3 : args.ScratchLearningRate ?? 1e-3,
            DropPathRate = args.FineTuneDropPath ?? new FineTuneSettings().DropPathRate,
            HeadWarmupFraction = args.FineTuneHeadWarmup ?? (pretrained ? null : 0),
            LayerDecay = pretrained ? args.LayerDecay ?? FineTuneSettings.AutoLayerDecay(encoder.Architecture.Depth) : 1.0, MaxSteps = maxSteps,
        };
        long steps = 0;
        using var engine = ImageClassifierEngine.Train(encoder, 10, new InMemoryImageSource(pixels, labels, labels.Length, 1, 28, seed, shuffle: true), null,
            settings, m => steps = Math.Max(steps, m.Step), null, CancellationToken.None);
        return (Accuracy(engine, data), steps, stepsPerEpoch);
    }

    private static double Accuracy(ImageClassifierEngine engine, EvaluationData data)
    {
        int correct = 0;
        for (int start = 0; start < data.TestCount; start += 500)
        {
            int n = Math.Min(500, data.TestCount - start);
            var scores = engine.PredictScores(data.TestPixels.AsSpan(start * 784, n * 784).ToArray(), n);
            for (int i = 0; i < n; i++)
            {
                var row = scores.AsSpan(i * 10, 10);
                int predicted = row.IndexOf(MaxOf(row));
                correct += predicted == data.TestLabels[start + i] ? 1 : 0;
            }
        }

        return (double)correct / data.TestCount;
    }

    private static float MaxOf(ReadOnlySpan<float> values)
    {
        float max = float.NegativeInfinity;
        foreach (var v in values)
        {
            max = Math.Max(max, v);
        }

        return max;
    }

    private static string Describe(ProbeResult p) => p.L2 is { } l2
        ? string.Create(CultureInfo.InvariantCulture, $"{p.Test:P1} (L2 {l2}; held out by L2: {string.Join(", ", p.Curve.Select(x => $"{x.L2} {x.HeldOut * 100:F1}"))})")
        : p.Test.ToString("P1", CultureInfo.InvariantCulture);

    // L2 strengths the tuned probe chooses from. Measured on held-out training images (docs/results.md, "The probe's
    // regularization"): a random encoder's features do best near 0.03, pretrained ones near 1, raw pixels near 30, so
    // any one fixed strength favours some feature spaces over others.
    private static readonly float[] ProbeL2Grid = [0.01f, 0.03f, 0.1f, 0.3f, 1f, 3f, 10f, 30f, 100f];

    // One probe: the accuracy on the held-out fifth of the labelled images that chose the L2 strength, the test
    // accuracy of the refit on all of them, and that strength (null for ML.NET's defaults).
    internal readonly record struct ProbeResult(double HeldOut, double Test, float? L2, IReadOnlyList<(float L2, double HeldOut)> Curve);

    // Multinomial logistic regression (L-BFGS) on standardised features: raw pixels when encoder is null, else the
    // mean-pooled patch tokens of one block. Tuned: L1 0 and the L2 strength of the grid that scores best on a held-out
    // fifth of the labelled images, then refit on all of them; otherwise ML.NET's defaults (L1 1, L2 1).
    private static ProbeResult LinearModel(EvaluationData data, int seed, (BootMaeEncoder Encoder, int Block)? features, bool tuned)
    {
        var (trainPixels, trainLabels) = data.Labelled(ProbePerClass, seed);
        float[] Features(float[] pixels, int count)
        {
            if (features is not { } f)
            {
                return pixels;
            }

            var result = new List<float>(count * f.Encoder.Architecture.EmbedDim);
            for (int start = 0; start < count; start += 500)
            {
                int n = Math.Min(500, count - start);
                result.AddRange(f.Encoder.Embed(pixels.AsSpan(start * 784, n * 784).ToArray(), n, BootMaePooling.Mean, f.Block, BootMaePrecision.Float32));
            }

            return result.ToArray();
        }

        int d = features is { } g ? g.Encoder.Architecture.EmbedDim : 784;
        return Probe(Features(trainPixels, trainLabels.Length), trainLabels, Features(data.TestPixels, data.TestCount), data.TestLabels, d, seed, tuned);
    }

    /// <summary>
    /// The linear probe on given features (count×d, row-major): multinomial logistic regression on standardised
    /// features. Tuned, the L2 strength is the grid's best on every fifth training row when fitted on the others; the
    /// test rows are scored once, by the refit on all training rows, and choose nothing.
    /// </summary>
    internal static ProbeResult Probe(float[] trainFeatures, int[] trainLabels, float[] testFeatures, int[] testLabels, int d, int seed, bool tuned)
    {
        var ml = new MLContext(seed);
        IDataView View(float[] values, int[] labels, Func<int, bool> keep)
        {
            var items = labels.Select((label, i) => (label, i)).Where(x => keep(x.i))
                .Select(x => new ProbeRow { Label = (uint)x.label, Features = values.AsSpan(x.i * d, d).ToArray() }).ToList();
            var schema = SchemaDefinition.Create(typeof(ProbeRow));
            schema[nameof(ProbeRow.Features)].ColumnType = new VectorDataViewType(NumberDataViewType.Single, d);
            return ml.Data.LoadFromEnumerable(items, schema);
        }

        double Score(IDataView fit, IDataView scored, float? l2)
        {
            var options = new Microsoft.ML.Trainers.LbfgsMaximumEntropyMulticlassTrainer.Options { LabelColumnName = "Label", FeatureColumnName = "Features" };
            if (l2 is { } strength)
            {
                options.L1Regularization = 0;
                options.L2Regularization = strength;
            }

            var model = ml.Transforms.Conversion.MapValueToKey("Label")
                .Append(ml.Transforms.NormalizeMeanVariance("Features"))
                .Append(ml.MulticlassClassification.Trainers.LbfgsMaximumEntropy(options))
                .Fit(fit);
            return ml.MulticlassClassification.Evaluate(model.Transform(scored)).MicroAccuracy;
        }

        var all = View(trainFeatures, trainLabels, _ => true);
        var test = View(testFeatures, testLabels, _ => true);
        if (!tuned)
        {
            return new ProbeResult(double.NaN, Score(all, test, null), null, []);
        }

        // Every fifth training row is held out: of the evaluation's labelled draw, which is in index order, about 40 per class.
        var fit = View(trainFeatures, trainLabels, i => i % 5 != 0);
        var heldOut = View(trainFeatures, trainLabels, i => i % 5 == 0);
        var curve = ProbeL2Grid.Select(l2 => (L2: l2, HeldOut: Score(fit, heldOut, l2))).ToList();
        var best = curve.MaxBy(x => x.HeldOut);
        return new ProbeResult(best.HeldOut, Score(all, test, best.L2), best.L2, curve);
    }

    private static string Markdown(EvaluationArguments args, EvaluationData data, List<EvaluationRow> rows)
    {
        var c = CultureInfo.InvariantCulture;
        var sb = new StringBuilder();
        sb.AppendLine(c, $"Data: {data.Description}. {(data.ScoredSet == "test" ? "Test" : "Scored on validation")}: {data.TestCount} images. Seeds: {string.Join(", ", args.Seeds)}. CPU: {CpuModel()}, {Environment.ProcessorCount} cores.");
        string budget = args.PretrainSteps is { } s ? $", {s} BootMAE steps" + (args.MaePretrainSteps is { } m ? $" and {m} MAE steps" : string.Empty) : $", {args.PretrainMinutes} minutes per method";
        string recipe = args.Official ? ", official recipe" : string.Empty;
        sb.AppendLine(c, $"Architecture: D {args.Architecture.EmbedDim}, {args.Architecture.Depth} blocks, patch {args.Architecture.PatchSize}, BootMAE decoders of {args.Architecture.DecoderDepth} block{(args.Architecture.DecoderDepth == 1 ? string.Empty : "s")}; pretraining batch {args.PretrainBatch}{budget}{recipe}.");
        sb.AppendLine();
        sb.AppendLine("| method | evaluation | labels | pretraining steps | pretraining min | fine-tune steps | accuracy (mean ± half-range) | per seed |");
        sb.AppendLine("|---|---|--:|--:|--:|--:|--:|---|");
        foreach (var group in rows.GroupBy(r => (r.method, Evaluation: r.evaluation.StartsWith("linear probe, best", StringComparison.Ordinal) ? "linear probe, best block" : r.evaluation, r.labels)))
        {
            var list = group.ToList();
            double mean = list.Average(r => r.accuracy), half = (list.Max(r => r.accuracy) - list.Min(r => r.accuracy)) / 2;
            string evaluation = list.Count == 1 ? list[0].evaluation : group.Key.Evaluation + " (" + string.Join(", ", list.Select(r => r.evaluation[(r.evaluation.IndexOf('(') + 1)..].TrimEnd(')')).Where(x => x.Contains("of", StringComparison.Ordinal))) + ")";
            sb.AppendLine(c, $"| {group.Key.method} | {evaluation.Replace(" ()", string.Empty, StringComparison.Ordinal)} | {group.Key.labels:N0} | {list.Average(r => r.pretrain_steps):N0} | {list.Average(r => r.pretrain_seconds) / 60:F1} | {list.Average(r => r.finetune_steps):N0} | {mean:P1} ± {half * 100:F1} | {string.Join(" / ", list.Select(r => r.accuracy.ToString("P1", c)))} |");
        }

        return sb.ToString();
    }

    // What the pretraining will run, so that logs from different CPUs can be told apart.
    private static string PrecisionNote(EvaluationArguments args)
    {
        var precision = args.Precision ?? new BootMaePretrainerSettings().Precision;
        bool fast = Training.TorchDevices.HasFastBFloat16(TorchSharp.torch.CPU);
        return StepBenchmark.PrecisionLabel(precision, BootMaeMode.BootMae, fast, tf32: false) + (fast && precision != BootMaePrecision.Float32 ? " (BootMAE)" : string.Empty);
    }

    private static string CpuModel()
    {
        try
        {
            var lines = File.ReadAllLines("/proc/cpuinfo");
            string model = lines.FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal))?.Split(':', 2)[1].Trim() ?? "unknown";
            string flags = lines.FirstOrDefault(l => l.StartsWith("flags", StringComparison.Ordinal)) ?? string.Empty;
            string simd = flags.Contains("amx_bf16", StringComparison.Ordinal) ? "AMX" : flags.Contains("avx512_bf16", StringComparison.Ordinal) ? "AVX-512 BF16"
                : flags.Contains("avx512f", StringComparison.Ordinal) ? "AVX-512" : flags.Contains("avx2", StringComparison.Ordinal) ? "AVX2 only" : "no AVX2";
            return $"{model} ({simd})";
        }
        catch (IOException)
        {
            return "unknown";
        }
    }

    private sealed class ProbeRow
    {
        public uint Label { get; set; }

        public float[] Features { get; set; } = Array.Empty<float>();
    }
}

internal sealed record EvaluationRow(int seed, string method, string evaluation, int labels, long pretrain_steps, double pretrain_seconds, long finetune_steps, double accuracy);

/// <summary>Fashion-MNIST for the evaluation: Debian's full set when installed, else the embedded subset.</summary>
internal sealed class EvaluationData
{
    private const string DebianFolder = "/usr/share/datasets/fashion-mnist";

    private EvaluationData(string description, byte[] train, byte[] trainLabels, byte[] test, byte[] testLabels)
    {
        Description = description;
        _train = train;
        _trainLabels = trainLabels;
        TestCount = testLabels.Length;
        TestPixels = test.Select(b => b / 255f).ToArray();
        TestLabels = testLabels.Select(b => (int)b).ToArray();
    }

    private readonly byte[] _train;
    private readonly byte[] _trainLabels;

    public string Description { get; }

    public int TrainCount => _trainLabels.Length;

    public int TestCount { get; }

    public float[] TestPixels { get; }

    public int[] TestLabels { get; }

    // "test", or "validation" when the scored images are held-out training images (--validation).
    public string ScoredSet { get; private init; } = "test";

    public static EvaluationData Load(int? unlabelledLimit, int? testLimit, int? validation = null)
    {
        var data = LoadAll(unlabelledLimit);
        if (validation is { } v)
        {
            return data.WithValidation(v);
        }

        return testLimit is { } t && t < data.TestCount ? data.WithTest(t) : data;
    }

    // Scores on count training images (count / 10 per class, fixed by a seed of their own) instead of the test set, and
    // keeps them out of every labelled draw, so that recipe choices can be made without looking at the test set. The
    // unlabelled pretraining images still include them (their labels are never used there).
    private EvaluationData WithValidation(int count)
    {
        var order = Enumerable.Range(0, TrainCount).ToArray();
        new Random(424242).Shuffle(order);
        var held = order.GroupBy(i => _trainLabels[i]).OrderBy(g => g.Key).SelectMany(g => g.Take(count / 10)).OrderBy(i => i).ToArray();
        return new EvaluationData(Description + $"; scored on {held.Length} held-out training images, not the test set", _train, _trainLabels,
            TrainPixels(held), held.Select(i => (int)_trainLabels[i]).ToArray())
        {
            ScoredSet = "validation",
            _heldOut = held.ToHashSet(),
        };
    }

    private HashSet<int> _heldOut = [];

    // The first count test images (the test file's order is close to class-balanced).
    private EvaluationData WithTest(int count) => new(Description, _train, _trainLabels,
        TestPixels.AsSpan(0, count * 784).ToArray(), TestLabels.AsSpan(0, count).ToArray());

    private EvaluationData(string description, byte[] train, byte[] trainLabels, float[] test, int[] testLabels)
    {
        Description = description;
        _train = train;
        _trainLabels = trainLabels;
        TestCount = testLabels.Length;
        TestPixels = test;
        TestLabels = testLabels;
    }

    private static EvaluationData LoadAll(int? unlabelledLimit)
    {
        if (File.Exists(Path.Combine(DebianFolder, "train-images-idx3-ubyte.gz")))
        {
            var train = Idx(Path.Combine(DebianFolder, "train-images-idx3-ubyte.gz"), 16);
            var trainLabels = Idx(Path.Combine(DebianFolder, "train-labels-idx1-ubyte.gz"), 8);
            var test = Idx(Path.Combine(DebianFolder, "t10k-images-idx3-ubyte.gz"), 16);
            var testLabels = Idx(Path.Combine(DebianFolder, "t10k-labels-idx1-ubyte.gz"), 8);
            int n = Math.Min(trainLabels.Length, unlabelledLimit ?? int.MaxValue);
            return new EvaluationData($"full Fashion-MNIST ({DebianFolder})", train.AsSpan(0, n * 784).ToArray(), trainLabels.AsSpan(0, n).ToArray(), test, testLabels);
        }

        var arrays = FashionMnistSample.LoadArrays();
        return new EvaluationData("embedded Fashion-MNIST subset (install dataset-fashion-mnist for the full set)",
            arrays.Train.Pixels, arrays.Train.Labels, arrays.Test.Pixels, arrays.Test.Labels);
    }

    // Every training image, labels unused.
    public InMemoryImageSource Unlabelled(int seed) => new(_train.Select(b => b / 255f).ToArray(), null, TrainCount, 1, 28, seed, shuffle: true);

    // perClass labelled images per class, drawn from the training images by a seeded shuffle (the same for every method).
    public (float[] Pixels, int[] Labels) Labelled(int perClass, int seed)
    {
        var order = Enumerable.Range(0, TrainCount).ToArray();
        new Random(seed * 7919).Shuffle(order);
        var chosen = order.Where(i => !_heldOut.Contains(i)).GroupBy(i => _trainLabels[i]).OrderBy(g => g.Key).SelectMany(g => g.Take(perClass)).OrderBy(i => i).ToArray();
        return (TrainPixels(chosen), chosen.Select(i => (int)_trainLabels[i]).ToArray());
    }

    // The training images at these indices, scaled to [0, 1].
    private float[] TrainPixels(int[] indices)
    {
        var pixels = new float[indices.Length * 784];
        for (int k = 0; k < indices.Length; k++)
        {
            for (int j = 0; j < 784; j++)
            {
                pixels[(k * 784) + j] = _train[(indices[k] * 784) + j] / 255f;
            }
        }

        return pixels;
    }

    private static byte[] Idx(string path, int header)
    {
        using var stream = new GZipStream(File.OpenRead(path), CompressionMode.Decompress);
        using var memory = new MemoryStream();
        stream.CopyTo(memory);
        return memory.ToArray()[header..];
    }
}

/// <summary>Options of the <c>evaluate</c> command.</summary>
internal sealed class EvaluationArguments
{
    public BootMaeArchitecture Architecture { get; set; } = BootMaeArchitecture.Small28;

    public int[] Seeds { get; set; } = [1, 2];

    public HashSet<string> Methods { get; set; } = ["pixels", "random", "bootmae", "mae"];

    public double PretrainMinutes { get; set; } = 10;

    public long? PretrainSteps { get; set; }

    // MAE's steps when they differ from BootMAE's (equal wall time from a separate timing run).
    public long? MaePretrainSteps { get; set; }

    public int PretrainBatch { get; set; } = 64;

    public int FineTuneBatch { get; set; } = 64;

    public List<(int Labels, int Epochs)> FineTune { get; set; } = [(100, 60), (1000, 30)];

    public bool Probe { get; set; } = true;

    public bool TunedProbe { get; set; } = true;

    public int? UnlabelledLimit { get; set; }

    public int? TestLimit { get; set; }

    public bool Official { get; set; }

    public double? LearningRate { get; set; }

    public BootMaeFeatureTargetNormalization? FeatureNorm { get; set; }

    public double? EmaFloor { get; set; }

    public double? PixelEpsilon { get; set; }

    public bool? NormPix { get; set; }

    public bool? Augment { get; set; }

    public BootMaeTarget? Target { get; set; }

    public bool? Inject { get; set; }

    public BootMaeMasking? Masking { get; set; }

    public double? TeacherFraction { get; set; }

    public double? MaskRatio { get; set; }

    public double? FeatureWeight { get; set; }

    // Null: the pretrainer's default (a bf16 teacher where bf16 is fast, else fp32).
    public BootMaePrecision? Precision { get; set; }

    public double? LayerDecay { get; set; }

    public double? FineTuneLearningRate { get; set; }

    // Off: on held-out images the crop and flip cost both the pretrained and the from-scratch runs 1–18 points in the
    // table's 300–480-step fine-tunes of 28-pixel images (docs/results.md, "Fine-tuning augmentation").
    public bool FineTuneAugment { get; set; }

    // The from-scratch runs' fine-tuning learning rate (--ft-lr is the pretrained runs').
    public double? ScratchLearningRate { get; set; }

    public double? FineTuneDropPath { get; set; }

    public double? FineTuneHeadWarmup { get; set; }

    // Score on this many held-out training images instead of the test set (for choosing recipes).
    public int? Validation { get; set; }

    public string? LoadEncoder { get; set; }

    public long LoadedSteps { get; set; }

    public double LoadedSeconds { get; set; }

    public string[]? FromJson { get; set; }

    public string? SaveEncoders { get; set; }

    public string? MarkdownPath { get; set; }

    public string? JsonPath { get; set; }

    // --plots DIR: the SVG charts of EvaluationPlots.
    public string? PlotsFolder { get; set; }

    /// <summary>The <c>evaluate</c> command: its options (the defaults are this class's), parsed into arguments for <paramref name="run"/>.</summary>
    public static System.CommandLine.Command CreateCommand(Func<EvaluationArguments, int> run)
    {
        var d = new EvaluationArguments();
        // "none": only what --load-encoder names.
        string[] knownMethods = ["pixels", "random", "bootmae", "mae", "none"];
        var seeds = CommandLine.List("--seeds", "1,2", "Seeds, comma-separated [default: 1,2]", CommandLine.ParseIntItem, "a whole number");
        var methods = CommandLine.List("--methods", "pixels,random,bootmae,mae", "Methods to run, comma-separated, or none (only --load-encoder) [default: all four]",
            m => knownMethods.Contains(m) ? m : null, "one of " + string.Join(", ", knownMethods));
        var pretrainMinutes = CommandLine.Double("--pretrain-minutes", "Pretraining time per method (timed steps decide the step count)", d.PretrainMinutes, 0);
        var pretrainSteps = CommandLine.NullableLong("--pretrain-steps", "Pretraining steps (instead of --pretrain-minutes)", 1);
        var maeSteps = CommandLine.NullableLong("--mae-steps", "MAE's steps when they differ from BootMAE's [default: --pretrain-steps]", 1);
        var pretrainBatch = CommandLine.Int("--pretrain-batch", "Pretraining batch", d.PretrainBatch);
        // Only the 28x28 greyscale presets: the evaluation reads Fashion-MNIST.
        var preset = CommandLine.Choice("--preset", "Network shape (BootMaeArchitecture preset)", d.Architecture, "small28", Presets.Greyscale28);
        var decoderDepth = CommandLine.NullableInt("--decoder-depth", ArgumentOptions.DecoderDepthDescription);
        var fineTune = new System.CommandLine.Option<List<(int Labels, int Epochs)>?>("--finetune")
        {
            Description = "Fine-tuning runs LABELS:EPOCHS, comma-separated, or none [default: 100:60,1000:30]",
            HelpName = "100:60,1000:30|none",
            CustomParser = result =>
            {
                var text = result.Tokens[0].Value;
                if (text == "none")
                {
                    return [];
                }

                var runs = new List<(int, int)>();
                foreach (var part in text.Split(','))
                {
                    var pair = part.Split(':');
                    if (pair.Length != 2 || CommandLine.ParseIntItem(pair[0]) is not { } labels || CommandLine.ParseIntItem(pair[1]) is not { } epochs)
                    {
                        result.AddError($"--finetune '{text}': '{part}' is not LABELS:EPOCHS (or use none).");
                        return null;
                    }

                    runs.Add((labels, epochs));
                }

                return runs;
            },
        };
        var probe = CommandLine.Bool("--probe", "Linear probes on every block", d.Probe);
        var tunedProbe = CommandLine.Bool("--tuned-probe", "Probe L2 chosen on held-out labelled images (false: ML.NET's defaults, L1 1 and L2 1, as before)", d.TunedProbe);
        var unlabelled = CommandLine.NullableInt("--unlabelled", "Use only this many unlabelled images [default: all]");
        var test = CommandLine.NullableInt("--test", "Use only the first N test images [default: all]");
        var official = CommandLine.Bool("--official", "The paper's recipe instead of the package defaults", d.Official);
        var lr = CommandLine.NullableDouble("--lr", "Pretraining base learning rate [default: the recipe's]", 0);
        var featureNorm = CommandLine.NullableChoice("--feature-norm", "Feature target normalisation [default: the recipe's]",
            ("ln", BootMaeFeatureTargetNormalization.LayerNorm), ("batch", BootMaeFeatureTargetNormalization.BatchStandardized));
        var emaFloor = CommandLine.NullableDouble("--ema-floor", "Lowest EMA momentum [default: the recipe's]", 0, 1);
        var pixelEpsilon = CommandLine.NullableDouble("--pix-eps", "Epsilon of the normalised pixel target [default: the recipe's]", 0);
        var normPix = CommandLine.NullableBool("--norm-pix", "Per-patch normalised pixel targets [default: the recipe's]");
        var augment = CommandLine.NullableBool("--augment", "Pretraining augmentation [default: the recipe's]");
        var target = CommandLine.NullableChoice("--target", "Pretraining targets [default: the recipe's]", CommandLine.EnumChoices<BootMaeTarget>());
        var inject = CommandLine.NullableBool("--inject", "Context injection into the decoders [default: the recipe's]");
        var masking = CommandLine.NullableChoice("--masking", "Masking strategy [default: the recipe's]", CommandLine.EnumChoices<BootMaeMasking>());
        var teacherFraction = CommandLine.NullableDouble("--teacher-fraction", "Share of the patches the teacher sees [default: the recipe's]", 0, 1);
        var maskRatio = CommandLine.NullableDouble("--mask-ratio", "Share of the patches masked [default: the recipe's]", 0, 1);
        var featureWeight = CommandLine.NullableDouble("--feature-weight", "Final weight of the feature loss [default: the recipe's]", 0);
        var precision = CommandLine.NullableChoice("--precision", "Pretraining precision: bf16 teacher, mixed (student too) or fp32; bf16 only where it is fast [default: the recipe's]",
            ArgumentOptions.PrecisionNames);
        var layerDecay = CommandLine.NullableDouble("--layer-decay", "Fine-tuning layer decay [default: by depth]", 0, 1);
        var ftLr = CommandLine.NullableDouble("--ft-lr", "Fine-tuning learning rate [default: the trainer's]", 0);
        var ftAugment = CommandLine.Bool("--ft-augment", "Fine-tuning augmentation (random resized crop and flip)", d.FineTuneAugment);
        var scratchLr = CommandLine.NullableDouble("--scratch-lr", "From-scratch fine-tuning learning rate [default: the trainer's]", 0);
        var ftDropPath = CommandLine.NullableDouble("--ft-drop-path", "Fine-tuning drop-path rate, both runs [default: the trainer's]", 0, 1);
        var ftHeadWarmup = CommandLine.NullableDouble("--ft-head-warmup", "Share of the fine-tuning steps that train only the head (LP-FT), both runs [default: by labels per class for the pretrained run, 0 from scratch]", 0, 0.99);
        var validation = CommandLine.NullableInt("--validation", "Score on N held-out training images instead of the test set [default: test set]");
        var loadEncoder = CommandLine.Text("--load-encoder", "PATH", "Evaluate this saved BootMAE encoder instead of pretraining one");
        var loadedSteps = CommandLine.Long("--loaded-steps", "Pretraining steps of --load-encoder, for the table", d.LoadedSteps);
        var loadedSeconds = CommandLine.Double("--loaded-seconds", "Pretraining seconds of --load-encoder, for the table", d.LoadedSeconds, 0);
        var fromJson = CommandLine.List("--from-json", "A.jsonl,B.jsonl", "Only merge the rows of earlier runs into --md (and --plots)", f => f, "a file");
        var saveEncoders = CommandLine.Text("--save-encoders", "DIR", "Save the pretrained encoders here");
        var markdown = CommandLine.Text("--md", "FILE.md", "Write the results table here");
        var json = CommandLine.Text("--json", "FILE.jsonl", "Append the result rows here");
        var plots = CommandLine.Text("--plots", "DIR", "Draw the SVG charts here");
        var command = new System.CommandLine.Command("evaluate", "Probes and fine-tunes BootMAE, MAE and a random encoder against raw pixels and from-scratch training (docs/results.md)")
        {
            seeds, methods, pretrainMinutes, pretrainSteps, maeSteps, pretrainBatch, preset, decoderDepth, fineTune, probe, tunedProbe, unlabelled, test, official, lr, featureNorm,
            emaFloor, pixelEpsilon, normPix, augment, target, inject, masking, teacherFraction, maskRatio, featureWeight, precision, layerDecay, ftLr, ftAugment, scratchLr, ftDropPath, ftHeadWarmup, validation, loadEncoder,
            loadedSteps, loadedSeconds, fromJson, saveEncoders, markdown, json, plots,
        };
        command.SetAction(parse => run(new EvaluationArguments
        {
            Seeds = CommandLine.ValueOr(parse, seeds, null)?.Select(seed => seed!.Value).ToArray() ?? d.Seeds,
            Methods = CommandLine.ValueOr(parse, methods, null)?.Where(m => m != "none").ToHashSet() ?? d.Methods,
            PretrainMinutes = parse.GetValue(pretrainMinutes),
            PretrainSteps = parse.GetValue(pretrainSteps),
            MaePretrainSteps = parse.GetValue(maeSteps),
            PretrainBatch = parse.GetValue(pretrainBatch),
            Architecture = Presets.WithDecoderDepth(CommandLine.ValueOr(parse, preset, d.Architecture), parse.GetValue(decoderDepth)),
            FineTune = CommandLine.ValueOr(parse, fineTune, null) ?? d.FineTune,
            Probe = CommandLine.ValueOr(parse, probe, d.Probe),
            TunedProbe = CommandLine.ValueOr(parse, tunedProbe, d.TunedProbe),
            UnlabelledLimit = parse.GetValue(unlabelled),
            TestLimit = parse.GetValue(test),
            Official = CommandLine.ValueOr(parse, official, d.Official),
            LearningRate = parse.GetValue(lr),
            FeatureNorm = parse.GetValue(featureNorm),
            EmaFloor = parse.GetValue(emaFloor),
            PixelEpsilon = parse.GetValue(pixelEpsilon),
            NormPix = parse.GetValue(normPix),
            Augment = parse.GetValue(augment),
            Target = parse.GetValue(target),
            Inject = parse.GetValue(inject),
            Masking = parse.GetValue(masking),
            TeacherFraction = parse.GetValue(teacherFraction),
            MaskRatio = parse.GetValue(maskRatio),
            FeatureWeight = parse.GetValue(featureWeight),
            Precision = parse.GetValue(precision),
            LayerDecay = parse.GetValue(layerDecay),
            FineTuneLearningRate = parse.GetValue(ftLr),
            FineTuneAugment = CommandLine.ValueOr(parse, ftAugment, d.FineTuneAugment),
            ScratchLearningRate = parse.GetValue(scratchLr),
            FineTuneDropPath = parse.GetValue(ftDropPath),
            FineTuneHeadWarmup = parse.GetValue(ftHeadWarmup),
            Validation = parse.GetValue(validation),
            LoadEncoder = parse.GetValue(loadEncoder),
            LoadedSteps = parse.GetValue(loadedSteps),
            LoadedSeconds = parse.GetValue(loadedSeconds),
            FromJson = CommandLine.ValueOr(parse, fromJson, null),
            SaveEncoders = parse.GetValue(saveEncoders),
            MarkdownPath = parse.GetValue(markdown),
            JsonPath = parse.GetValue(json),
            PlotsFolder = parse.GetValue(plots),
        }));
        return command;
    }
}
