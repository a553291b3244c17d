using System.CommandLine;
using System.CommandLine.Parsing;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Microsoft.ML;
using Microsoft.ML.BootMae;
using Microsoft.ML.BootMae.Benchmarks;
using Microsoft.ML.BootMae.Training;
using static TorchSharp.torch;

// Benchmarks and the engine-level pretraining run: `--help` lists the commands, `COMMAND --help` their options and
// defaults (docs/benchmarks.md). With no command, the options are those of `step`.
//   step      one JSON line per run: median step time, images/s, MFU, peak RSS
//   compare   MAE and BootMAE alternately (--rounds), the step-time ratio and the lowest ratio this machine allows
//   profile   where one BootMAE step's time goes, phase by phase
//   ops       single ops of a tiny28 teacher block in fp32 and bf16
//   gpucheck  CUDA against CPU: losses and weights after a few steps, bf16 teacher, checkpoint portability
//   probe     pretrains, then fits a linear classifier (L-BFGS) on mean-pooled features: a quick quality check
//   evaluate  probes and fine-tunes BootMAE, MAE and a random encoder against raw pixels and from-scratch training (Evaluation.cs)
//   onnx      featurization images/s at batch 1 and 64, ONNX Runtime against TorchSharp (docs/deployment.md)
//   multipass SDCA fitted on uncached and on cached featurized data: encoder forward passes and wall time (MultiPassBenchmark.cs)
//   pretrain  pretraining on the embedded Fashion-MNIST with per-epoch loss, ETA, checkpoints and curves
//   reliability-probe (hidden) the reliability tests' child process (ReliabilityProbe.cs)
return Microsoft.ML.BootMae.Benchmarks.CommandLine.Invoke(BenchmarkCommands.Create(), args);

internal static class BenchmarkCommands
{
    public static RootCommand Create()
    {
        var o = new ArgumentOptions();
        var root = new RootCommand("Microsoft.ML.BootMae benchmarks and engine runs. Without a command: step.");
        Configure(root, o, "step", o.Step);
        root.Add(Command("step", "Times pretraining steps; prints one JSON line per run", o, o.Step));
        root.Add(Command("compare", "Runs MAE and BootMAE alternately for --rounds and prints the BootMAE/MAE step-time ratio with the lowest ratio the bf16 (or fp32) matrix speed allows", o, o.Step.Append(o.Rounds)));
        root.Add(Command("profile", "Times the phases of one BootMAE step (median of --steps after --warmup)", o, [o.Preset, o.Batch, o.Steps, o.Warmup, o.Precision, o.TeacherFraction, o.Threads]));
        root.Add(Command("ops", "Times single ops of a tiny28 teacher block (6400 tokens of width 192) in fp32 and bf16", o, [o.Threads]));
        root.Add(Command("gpucheck", "CUDA against CPU: losses and weights after a few steps, bf16 teacher, checkpoint portability", o, [o.Device, o.Threads]));
        root.Add(Command("probe", "Pretrains, then fits a linear classifier (L-BFGS) on mean-pooled features; prints one JSON line", o,
            [o.Preset, o.Mode, o.Epochs, o.Batch, o.LearningRate, o.TrainPerClass, o.NormPix, o.FeatureWeight, o.Precision, o.Threads]));
        root.Add(Command("onnx", "Featurization images/s at batch 1 and 64, ONNX Runtime against TorchSharp on the same encoder", o, [o.Preset, o.Threads]));
        root.Add(Command("multipass", "Fits SdcaMaximumEntropy on BootMaeFeaturize output, uncached then cached; prints encoder forward passes and fit time", o,
            [o.MultiPassPreset, o.Images, o.SdcaIterations, o.Threads]));
        root.Add(Command("pretrain", "Pretraining on the embedded Fashion-MNIST with per-epoch loss, ETA and checkpoints", o,
            [o.Preset, o.Mode, o.Epochs, o.Batch, o.Precision, o.TrainPerClass, o.CheckpointDirectory, o.Curve, o.Preview, o.Threads]));
        root.Add(EvaluationArguments.CreateCommand(arguments =>
        {
            BootMaeRuntime.EnsureTorchLoaded();
            Microsoft.ML.BootMae.Benchmarks.Evaluation.Run(arguments);
            return 0;
        }));

        // Hidden: the reliability tests' child process; its cases and paths pass through as they are.
        var cases = new Argument<string[]>("cases") { Arity = ArgumentArity.ZeroOrMore };
        var probe = new Command(ReliabilityProbe.Command, "The reliability tests' child process") { Hidden = true };
        probe.Add(cases);
        probe.SetAction(parse => ReliabilityProbe.Run([ReliabilityProbe.Command, .. parse.GetValue(cases) ?? []]));
        root.Add(probe);
        return root;
    }

    private static Command Command(string name, string description, ArgumentOptions o, IEnumerable<Option> options)
    {
        var command = new Command(name, description);
        Configure(command, o, name, options);
        return command;
    }

    private static void Configure(Command command, ArgumentOptions o, string name, IEnumerable<Option> options)
    {
        foreach (var option in options)
        {
            command.Add(option);
        }

        command.SetAction(parse => Run(o.Bind(parse, name)));
    }

    private static int Run(Arguments arguments)
    {
        BootMaeRuntime.EnsureTorchLoaded();
        if (arguments.Threads is { } threads)
        {
            set_num_threads(threads);
        }

        switch (arguments.Command)
        {
            case "step":
                Console.WriteLine(JsonSerializer.Serialize(StepBenchmark.Run(arguments, arguments.Mode)));
                break;
            case "compare":
                Compare(arguments);
                break;
            case "pretrain":
                PretrainRun.Run(arguments);
                break;
            case "profile":
                PhaseProfile.Run(arguments);
                break;
            case "gpucheck":
                return GpuCheck.Run(arguments);
            case "ops":
                OpProfile.Run();
                break;
            case "probe":
                Console.WriteLine(JsonSerializer.Serialize(ProbeRun.Run(arguments)));
                break;
            case "onnx":
                OnnxBenchmark.Run(arguments);
                break;
            case "multipass":
                MultiPassBenchmark.Run(arguments);
                break;
            default:
                throw new InvalidOperationException($"No command '{arguments.Command}'.");
        }

        return 0;
    }

    private static void Compare(Arguments arguments)
    {
        var results = new Dictionary<BootMaeMode, List<StepResult>> { [BootMaeMode.Mae] = new(), [BootMaeMode.BootMae] = new() };
        for (int round = 0; round < arguments.Rounds; round++)
        {
            foreach (var mode in new[] { BootMaeMode.Mae, BootMaeMode.BootMae })
            {
                var result = StepBenchmark.Run(arguments, mode);
                results[mode].Add(result);
                Console.WriteLine(JsonSerializer.Serialize(result));
            }
        }

        double mae = results[BootMaeMode.Mae].Min(r => r.ms_per_step_median);
        double boot = results[BootMaeMode.BootMae].Min(r => r.ms_per_step_median);
        // The teacher's matrix products cannot run faster than the bf16 (or, with --precision fp32, fp32) calibration, so
        // (MAE step + that time) / MAE step is the lowest ratio this machine allows, whatever else is optimised.
        var best = results[BootMaeMode.BootMae].MinBy(r => r.ms_per_step_median)!;
        double teacherFloorMs = best.teacher_flops / ((best.precision.Contains("bf16", StringComparison.Ordinal) ? best.gemm_bf16_gflops_calib : best.gemm_gflops_calib) * 1e9) * 1000;
        Console.WriteLine(JsonSerializer.Serialize(new
        {
            comparison = "bootmae_over_mae_step_time", preset = arguments.Preset, device = best.device, precision = best.precision, bf16_fast = best.bf16_fast,
            bootmae_ms = boot, mae_ms = mae, ratio = Math.Round(boot / mae, 3),
            // Each round's own ratio (MAE then BootMAE, back to back), to show how much the machine's noise moves it.
            round_ratios = results[BootMaeMode.BootMae].Zip(results[BootMaeMode.Mae]).Select(p => Math.Round(p.First.ms_per_step_median / p.Second.ms_per_step_median, 3)).ToArray(),
            teacher_floor_ms = Math.Round(teacherFloorMs, 1), ratio_floor = Math.Round((mae + teacherFloorMs) / mae, 3),
        }));
    }
}

internal sealed record StepResult(string impl, string mode, string config, string precision, int batch, int steps, double ms_per_step_median,
    double ms_per_step_min, double images_per_s, double peak_rss_mb, double flops_per_step, double gemm_gflops_calib, double mfu,
    double loss_first, double loss_last, int threads, string device, double teacher_flops, double gemm_bf16_gflops_calib, bool bf16_fast, bool tf32 = false);

internal sealed class Arguments
{
    public string Command { get; init; } = "step";
    public string Preset { get; init; } = "tiny28";
    public BootMaeMode Mode { get; init; } = BootMaeMode.BootMae;
    public int Batch { get; init; } = 128;
    public int Steps { get; init; } = 12;
    public int Warmup { get; init; } = 3;
    public int? Threads { get; init; }
    public BootMaeDevice? DeviceOption { get; init; }

    public BootMaeDevice Device => DeviceOption ?? BootMaeDevice.Cpu;
    public BootMaePrecision Precision { get; init; } = BootMaePrecision.BFloat16;
    public double TeacherFraction { get; init; } = 1.0;
    public bool Tf32 { get; init; }
    public int Rounds { get; init; } = 2;
    public double LearningRate { get; init; } = new BootMaePretrainerSettings().LearningRate;
    public bool NormPixTarget { get; init; } = true;
    public double FeatureWeight { get; init; } = 1.0;
    public int Epochs { get; init; } = 5;
    public int TrainPerClass { get; init; } = 1000;
    public string? CheckpointDirectory { get; init; }
    public string? CurvePath { get; init; }
    public string? PreviewPath { get; init; }
    public int Images { get; init; } = 500;
    public int SdcaIterations { get; init; } = 10;
    public int? DecoderDepth { get; init; }

    public BootMaeArchitecture Architecture => Presets.WithDecoderDepth(Presets.ByName(Preset), DecoderDepth);
}

/// <summary>The options of the commands that read <see cref="Arguments"/>, with the defaults they always had.</summary>
internal sealed class ArgumentOptions
{
    public Option<string> Preset { get; } = Microsoft.ML.BootMae.Benchmarks.CommandLine.Choice("--preset", "Network shape", "tiny28", "tiny28", Presets.All.Select(p => (p.Name, p.Name)).ToArray());
    public Option<BootMaeMode> Mode { get; } = Microsoft.ML.BootMae.Benchmarks.CommandLine.Choice("--mode", "BootMAE or plain MAE", BootMaeMode.BootMae, "bootmae", ("bootmae", BootMaeMode.BootMae), ("mae", BootMaeMode.Mae));
    public Option<int> Batch { get; } = Microsoft.ML.BootMae.Benchmarks.CommandLine.Int("--batch", "Images per step", 128);
    public Option<int> Steps { get; } = Microsoft.ML.BootMae.Benchmarks.CommandLine.Int("--steps", "Timed steps", 12);
    public Option<int> Warmup { get; } = Microsoft.ML.BootMae.Benchmarks.CommandLine.Int("--warmup", "Untimed steps first", 3, min: 0);

    // step and compare time a step from the report of the one before it, so the first step cannot be timed.
    public Option<int> StepWarmup { get; } = Microsoft.ML.BootMae.Benchmarks.CommandLine.Int("--warmup", "Untimed steps first (at least 1: a step is timed from the end of the one before)", 3, min: 1);
    // Also evaluate's: the same help text in both.
    internal const string DecoderDepthDescription = "Blocks in each BootMAE decoder (BootMaeArchitecture.DecoderDepth; MAE's decoder keeps its own depth) [default: the preset's]";
    public Option<int?> DecoderDepth { get; } = Microsoft.ML.BootMae.Benchmarks.CommandLine.NullableInt("--decoder-depth", DecoderDepthDescription);
    public Option<int?> Threads { get; } = Microsoft.ML.BootMae.Benchmarks.CommandLine.NullableInt("--threads", "torch intra-op threads [default: torch's]");
    public Option<BootMaeDevice?> Device { get; } = Microsoft.ML.BootMae.Benchmarks.CommandLine.NullableChoice("--device", "Where to run [default: cpu; gpucheck: cuda]", ("cpu", BootMaeDevice.Cpu), ("cuda", BootMaeDevice.Cuda));
    public Option<BootMaePrecision> Precision { get; } = Microsoft.ML.BootMae.Benchmarks.CommandLine.Choice("--precision",
        "bf16: bf16 teacher, fp32 student; mixed: also the student's matrix products in bf16 (fp32 masters); fp32: all fp32. bf16 and mixed only where bf16 is fast, fp32 elsewhere",
        BootMaePrecision.BFloat16, "bf16", PrecisionNames);

    // The --precision names of every command (step, evaluate, ...).
    internal static readonly (string Name, BootMaePrecision Value)[] PrecisionNames =
    [
        ("bf16", BootMaePrecision.BFloat16), ("bfloat16", BootMaePrecision.BFloat16), ("mixed", BootMaePrecision.BFloat16Mixed), ("bf16-mixed", BootMaePrecision.BFloat16Mixed),
        ("fp32", BootMaePrecision.Float32), ("float32", BootMaePrecision.Float32),
    ];
    public Option<bool> Tf32 { get; } = Microsoft.ML.BootMae.Benchmarks.CommandLine.Bool("--tf32", "CUDA: allow TF32 for fp32 matrix products (torch.backends.cuda.matmul.allow_tf32)", false);
    public Option<double> TeacherFraction { get; } = Microsoft.ML.BootMae.Benchmarks.CommandLine.Double("--teacher-fraction", "Share of the patches the teacher sees", 1.0, 0, 1);
    public Option<int> Rounds { get; } = Microsoft.ML.BootMae.Benchmarks.CommandLine.Int("--rounds", "MAE-then-BootMAE rounds", 2);
    public Option<double> LearningRate { get; } = Microsoft.ML.BootMae.Benchmarks.CommandLine.Double("--lr", "Base learning rate", new BootMaePretrainerSettings().LearningRate, 0);
    public Option<bool> NormPix { get; } = Microsoft.ML.BootMae.Benchmarks.CommandLine.Bool("--norm-pix", "Per-patch normalised pixel targets", true);
    public Option<double> FeatureWeight { get; } = Microsoft.ML.BootMae.Benchmarks.CommandLine.Double("--feature-weight", "Weight of the feature loss", 1.0, 0);
    public Option<int> Epochs { get; } = Microsoft.ML.BootMae.Benchmarks.CommandLine.Int("--epochs", "Pretraining epochs", 5);
    public Option<int> TrainPerClass { get; } = Microsoft.ML.BootMae.Benchmarks.CommandLine.Int("--train-per-class", "Fashion-MNIST training images per class", 1000);
    public Option<string?> CheckpointDirectory { get; } = Microsoft.ML.BootMae.Benchmarks.CommandLine.Text("--checkpoint-dir", "DIR", "Keep checkpoints and the final encoder.bootmae here");
    public Option<string?> Curve { get; } = Microsoft.ML.BootMae.Benchmarks.CommandLine.Text("--curve", "FILE.png", "Draw the training curves here");
    public Option<string> MultiPassPreset { get; } = Microsoft.ML.BootMae.Benchmarks.CommandLine.Choice("--preset", "Network shape (28x28 greyscale)", "small28", "small28", Presets.Greyscale28.Select(p => (p.Name, p.Name)).ToArray());
    public Option<int> Images { get; } = Microsoft.ML.BootMae.Benchmarks.CommandLine.Int("--images", "Fashion-MNIST training images featurized", 500);
    public Option<int> SdcaIterations { get; } = Microsoft.ML.BootMae.Benchmarks.CommandLine.Int("--sdca-iterations", "SDCA iterations, each reading the data twice (0: SDCA's own default, 3 x 500,000 / rows)", 10, min: 0);
    public Option<string?> Preview { get; } = Microsoft.ML.BootMae.Benchmarks.CommandLine.Text("--preview", "FILE.png", "Draw a reconstruction preview here each epoch");

    /// <summary>The options of <c>step</c> (and the root command).</summary>
    public Option[] Step => [Preset, Mode, Batch, Steps, StepWarmup, Threads, Device, Precision, TeacherFraction, Tf32, DecoderDepth];

    /// <summary>The arguments of <paramref name="command"/>; options the command does not have keep their defaults.</summary>
    public Arguments Bind(ParseResult parse, string command)
    {
        T Get<T>(Option<T> option, T fallback) => Microsoft.ML.BootMae.Benchmarks.CommandLine.ValueOr(parse, option, fallback);
        var d = new Arguments();
        return new Arguments
        {
            Command = command,
            Preset = command == "multipass" ? Get(MultiPassPreset, "small28") : Get(Preset, d.Preset),
            Mode = Get(Mode, d.Mode),
            Batch = Get(Batch, d.Batch),
            Steps = Get(Steps, d.Steps),
            Warmup = command == "profile" ? Get(Warmup, d.Warmup) : Get(StepWarmup, d.Warmup),
            Threads = Get(Threads, d.Threads),
            DeviceOption = Get(Device, d.DeviceOption),
            Precision = Get(Precision, d.Precision),
            TeacherFraction = Get(TeacherFraction, d.TeacherFraction),
            Tf32 = Get(Tf32, d.Tf32),
            Rounds = Get(Rounds, d.Rounds),
            LearningRate = Get(LearningRate, d.LearningRate),
            NormPixTarget = Get(NormPix, d.NormPixTarget),
            FeatureWeight = Get(FeatureWeight, d.FeatureWeight),
            Epochs = Get(Epochs, d.Epochs),
            TrainPerClass = Get(TrainPerClass, d.TrainPerClass),
            CheckpointDirectory = Get(CheckpointDirectory, d.CheckpointDirectory),
            CurvePath = Get(Curve, d.CurvePath),
            PreviewPath = Get(Preview, d.PreviewPath),
            Images = Get(Images, d.Images),
            SdcaIterations = Get(SdcaIterations, d.SdcaIterations),
            DecoderDepth = Get(DecoderDepth, d.DecoderDepth),
        };
    }
}

internal static class StepBenchmark
{
    private static (double Fp32, double BFloat16)? _gemm;

    public static StepResult Run(Arguments args, BootMaeMode mode)
    {
        var architecture = args.Architecture;
        var settings = new BootMaePretrainerSettings
        {
            Mode = mode, BatchSize = args.Batch, MaxEpochs = 1_000_000, MaxSteps = args.Warmup + args.Steps,
            Device = args.Device, FallbackToCpu = false, Precision = args.Precision, TeacherFraction = args.TeacherFraction, LogEveryNSteps = 1, Seed = 7,
        };
        var device = args.Device == BootMaeDevice.Cuda ? CUDA : CPU;
        bool cuda = device.type == TorchSharp.DeviceType.CUDA;
        bool tf32Before = cuda && TorchSharp.torch.backends.cuda.matmul.allow_tf32;
        if (cuda)
        {
            // Process-wide; set for this run only (the mixed student allows it itself for its run).
            TorchSharp.torch.backends.cuda.matmul.allow_tf32 = args.Tf32;
        }

        var source = Data.Source(architecture, args.Batch * 4);
        var stamps = new List<(long Step, double Seconds, float Loss)>();
        var clock = Stopwatch.StartNew();
        using (new BootMaePretrainer(architecture, settings).Train(source, m =>
        {
            // The epoch-end report repeats the step of the report just before it.
            if (stamps.Count == 0 || stamps[^1].Step != m.Step)
            {
                stamps.Add((m.Step, clock.Elapsed.TotalSeconds, m.Loss));
            }
        }))
        {
        }

        if (cuda)
        {
            TorchSharp.torch.backends.cuda.matmul.allow_tf32 = tf32Before;
        }

        // Each report follows its step; per-step time is the gap between consecutive reports.
        var times = stamps.Zip(stamps.Skip(1)).Skip(args.Warmup - 1).Select(p => (p.Second.Seconds - p.First.Seconds) * 1000).OrderBy(t => t).ToList();
        double median = times.Count % 2 == 1 ? times[times.Count / 2] : (times[times.Count / 2 - 1] + times[times.Count / 2]) / 2;
        double flops = FlopCounter.PerStep(architecture, settings, args.Batch);
        // On a CPU without fast bf16 the bf16 GEMM is libtorch's single-threaded fallback (minutes at 2048³): not timed, reported as 0.
        bool fastBf16 = Microsoft.ML.BootMae.Training.TorchDevices.HasFastBFloat16(device);
        var (gemm, gemmBf16) = _gemm ??= (GemmCalibration(device, ScalarType.Float32), fastBf16 ? GemmCalibration(device, ScalarType.BFloat16) : 0);
        if (!fastBf16)
        {
            BFloat16Note.NotFastHere(args.Precision == BootMaePrecision.BFloat16Mixed
                ? "the mixed student and the teacher run in fp32 and the bf16 calibration is skipped"
                : "the teacher runs in fp32 and the bf16 calibration is skipped");
        }

        return new StepResult("torchsharp", mode == BootMaeMode.Mae ? "mae" : "bootmae",
            $"{args.Preset} {architecture.ImageSize}x{architecture.ImageSize}x{architecture.Channels} p{architecture.PatchSize} d{architecture.EmbedDim} L{architecture.Depth} reg{architecture.RegressorDim} dec{(mode == BootMaeMode.Mae ? settings.MaeDecoderDepth : architecture.DecoderDepth)} tf{args.TeacherFraction}",
            PrecisionLabel(args.Precision, mode, fastBf16, args.Tf32 && cuda),
            args.Batch, times.Count, Math.Round(median, 1), Math.Round(times[0], 1), Math.Round(args.Batch / (median / 1000), 1), PeakRssMb(),
            flops, Math.Round(gemm, 1), Math.Round(flops / (median / 1000) / (gemm * 1e9), 3),
            stamps[0].Loss, stamps[^1].Loss, get_num_threads(), device.type == TorchSharp.DeviceType.CUDA ? "cuda" : "cpu",
            FlopCounter.Teacher(architecture, settings, args.Batch), Math.Round(gemmBf16, 1), fastBf16, args.Tf32 && cuda);
    }

    // What actually ran: bf16 only where it is fast (the pretrainer falls back to fp32 elsewhere, as this says).
    internal static string PrecisionLabel(BootMaePrecision precision, BootMaeMode mode, bool fastBf16, bool tf32)
    {
        string fp32 = tf32 ? "fp32 (tf32)" : "fp32";
        bool teacher = mode == BootMaeMode.BootMae && precision != BootMaePrecision.Float32 && fastBf16;
        return precision == BootMaePrecision.BFloat16Mixed && fastBf16
            ? teacher ? "mixed bf16 student, bf16 teacher" : "mixed bf16 student"
            : teacher ? $"{fp32} student, bf16 teacher" : fp32;
    }

    // GEMM throughput of this process in one dtype: the best of several 2048³ products (8192³ on a GPU).
    private static double GemmCalibration(Device device, ScalarType dtype)
    {
        using var scope = NewDisposeScope();
        using var guard = no_grad();
        bool cuda = device.type == TorchSharp.DeviceType.CUDA;
        int n = cuda ? 8192 : 2048;
        var a = randn(n, n, device: device).to(dtype);
        var b = randn(n, n, device: device).to(dtype);
        a.matmul(b).Dispose();
        if (cuda)
        {
            CudaSynchronize();
        }

        double best = 0;
        for (int i = 0; i < 5; i++)
        {
            var watch = Stopwatch.StartNew();
            a.matmul(b).Dispose();
            if (cuda)
            {
                CudaSynchronize();
            }

            best = Math.Max(best, 2.0 * n * n * n / watch.Elapsed.TotalSeconds / 1e9);
        }

        return best;
    }

    private static void CudaSynchronize() => TorchSharp.torch.cuda.synchronize();

    private static double PeakRssMb()
    {
        var line = File.ReadLines("/proc/self/status").FirstOrDefault(l => l.StartsWith("VmHWM:", StringComparison.Ordinal));
        return line is null ? 0 : Math.Round(double.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture) / 1024, 1);
    }
}

internal static class Data
{
    // tiny28: real Fashion-MNIST images; other presets: seeded noise images of the preset's size.
    public static InMemoryImageSource Source(BootMaeArchitecture a, int count, int trainPerClass = 1000)
    {
        if (a.ImageSize == 28 && a.Channels == 1)
        {
            var split = FashionMnistSample.LoadArrays(trainPerClass: Math.Max(1, Math.Min(trainPerClass, (count + 9) / 10)), testPerClass: 1).Train;
            var pixels = new float[split.Count * 28 * 28];
            for (int i = 0; i < split.Count; i++)
            {
                split.GetImage(i).CopyTo(pixels, i * 28 * 28);
            }

            // Exactly count images when asked for fewer than loaded, so every timed step has a full batch.
            return new InMemoryImageSource(pixels, null, Math.Min(count, split.Count), 1, 28, seed: 3, shuffle: true);
        }

        var random = new Random(3);
        var noise = new float[count * a.Channels * a.ImageSize * a.ImageSize];
        for (int i = 0; i < noise.Length; i++)
        {
            noise[i] = (float)random.NextDouble();
        }

        return new InMemoryImageSource(noise, null, count, a.Channels, a.ImageSize, seed: 3, shuffle: true);
    }
}

// Times the phases of one BootMAE step (median of --steps after --warmup), to see where a step's time goes.
internal static class PhaseProfile
{
    public static void Run(Arguments args)
    {
        var a = args.Architecture;
        var settings = new BootMaePretrainerSettings { Precision = args.Precision, TeacherFraction = args.TeacherFraction };
        // As the pretrainer decides: a bf16 teacher only where bf16 is fast (elsewhere it is libtorch's slow fallback).
        bool fastBf16 = Microsoft.ML.BootMae.Training.TorchDevices.HasFastBFloat16(CPU);
        if (args.Precision != BootMaePrecision.Float32 && !fastBf16)
        {
            BFloat16Note.NotFastHere("the teacher and the student are profiled in fp32");
        }

        bool bf16Teacher = args.Precision != BootMaePrecision.Float32 && fastBf16;
        using var network = Microsoft.ML.BootMae.Modules.BootMaeNetwork.Create(a, settings, 1);
        Microsoft.ML.BootMae.Modules.MixedPrecision.Apply(network, args.Precision == BootMaePrecision.BFloat16Mixed && fastBf16);
        using var teacher = new Microsoft.ML.BootMae.Modules.MomentumTeacher(network.Encoder, bf16Teacher);
        using var optimizer = ParameterGroups.CreateAdamW(network, 1e-4, 0.05);
        var times = new Dictionary<string, List<double>>();
        void Time(string name, Action action)
        {
            var watch = Stopwatch.StartNew();
            action();
            (times.TryGetValue(name, out var list) ? list : times[name] = new List<double>()).Add(watch.Elapsed.TotalMilliseconds);
        }

        for (int i = 0; i < args.Warmup + args.Steps; i++)
        {
            using var scope = NewDisposeScope();
            var images = rand(args.Batch, a.Channels, a.ImageSize, a.ImageSize) * 2 - 1;
            MaskBatch masks = null!;
            Tensor target = null!;
            Microsoft.ML.BootMae.Modules.BootMaeForward forward = default;
            LossResult loss = default;
            Time("masks", () => masks = MaskingGenerator.ForSettings(a, settings, i).Next(args.Batch));
            Time("teacher", () => target = teacher.Targets(images, masks, settings.TeacherFraction, new Random(i)).Target);
            Time("student forward", () => forward = network.Forward(images, masks));
            using (no_grad())
            {
                Microsoft.ML.BootMae.Modules.EncoderOutput enc = default;
                Time("  encoder fwd*", () => enc = network.Encoder.ForwardVisible(images, masks.IdsKeep, a.ShallowBlock, a.DeepBlockIndex));
                Time("  regressor fwd*", () => network.Regressor!.forward(enc.Latent, enc.Shallow, masks));
                Time("  predictor fwd*", () => network.Predictor!.forward(enc.Latent, enc.Deep, masks, network.Encoder.PositionEmbedding));
            }

            Time("losses", () => loss = BootMaeLosses.Compute(network, forward, images, masks, target, null, 1.0));
            Time("item", () => _ = loss.Total.item<float>());
            Time("backward", () => { optimizer.ZeroGrad(); loss.Total.backward(); });
            Time("adamw", () => optimizer.Step());
            Time("ema + bf16 sync", () => teacher.Update(network.Encoder, 0.99));
            if (i < args.Warmup)
            {
                times.Clear();
            }
        }

        foreach (var (name, list) in times)
        {
            list.Sort();
            Console.WriteLine($"{name,-18} {list[list.Count / 2],8:F1} ms");
        }

        Console.WriteLine($"{"total",-18} {times.Where(kv => !kv.Key.EndsWith('*')).Sum(kv => kv.Value[kv.Value.Count / 2]),8:F1} ms (* = extra no-grad timing, not in the total)");
    }
}

// Times single ops of a tiny28 teacher block (6400 tokens of width 192, 3 heads) in fp32 and bf16.
internal static class OpProfile
{
    public static void Run()
    {
        using var guard = no_grad();
        bool fastBf16 = Microsoft.ML.BootMae.Training.TorchDevices.HasFastBFloat16(CPU);
        if (!fastBf16)
        {
            BFloat16Note.NotFastHere("only fp32 ops are timed");
        }

        foreach (var dtype in fastBf16 ? new[] { ScalarType.Float32, ScalarType.BFloat16 } : new[] { ScalarType.Float32 })
        {
            using var scope = NewDisposeScope();
            var x = randn(128, 50, 192).to(dtype);
            var w = randn(576, 192).to(dtype);
            var w2 = randn(768, 192).to(dtype);
            var w3 = randn(192, 768).to(dtype);
            var q = randn(128, 3, 50, 64).to(dtype);
            var ln = nn.LayerNorm(192, eps: 1e-6);
            TorchSharp.ModuleExtensionMethods.to(ln, dtype);
            double Time(Func<Tensor> op)
            {
                op().Dispose();
                var list = new List<double>();
                for (int i = 0; i < 7; i++)
                {
                    var watch = Stopwatch.StartNew();
                    op().Dispose();
                    list.Add(watch.Elapsed.TotalMilliseconds);
                }

                list.Sort();
                return list[3];
            }

            Console.WriteLine($"{dtype}: qkv linear {Time(() => nn.functional.linear(x, w)):F2} ms, fc1 {Time(() => nn.functional.linear(x, w2)):F2} ms, " +
                $"fc2 {Time(() => nn.functional.linear(nn.functional.linear(x, w2), w3)):F2} ms (fc1+fc2), layernorm {Time(() => ln.forward(x)):F2} ms, " +
                $"gelu {Time(() => nn.functional.gelu(nn.functional.linear(x, w2))):F2} ms (fc1+gelu), sdpa {Time(() => nn.functional.scaled_dot_product_attention(q, q, q)):F2} ms, " +
                $"manual attention {Time(() => q.matmul(q.transpose(-2, -1)).mul(0.125).softmax(-1).matmul(q)):F2} ms");
        }
    }
}

/// <summary>The one line every command prints where bf16 would be libtorch's slow generic fallback.</summary>
internal static class BFloat16Note
{
    private static bool _written;

    public static void NotFastHere(string consequence)
    {
        if (!_written)
        {
            _written = true;
            Console.Error.WriteLine($"bf16: not fast here (no AVX-512 BF16, AMX or CUDA); {consequence}.");
        }
    }
}

internal static class ProbeRun
{
    public static object Run(Arguments args)
    {
        var architecture = args.Architecture;
        var data = FashionMnistSample.LoadArrays(trainPerClass: args.TrainPerClass, testPerClass: 200);
        float[] Pixels(FashionMnistSplit split)
        {
            var pixels = new float[split.Count * 28 * 28];
            for (int i = 0; i < split.Count; i++)
            {
                split.GetImage(i).CopyTo(pixels, i * 28 * 28);
            }

            return pixels;
        }

        var trainPixels = Pixels(data.Train);
        var settings = new BootMaePretrainerSettings
        {
            Mode = args.Mode, MaxEpochs = args.Epochs, BatchSize = args.Batch, LearningRate = args.LearningRate,
            Device = BootMaeDevice.Cpu, Precision = args.Precision, LogEveryNSteps = 1_000_000, Seed = 1,
            NormPixTarget = args.NormPixTarget, FeatureLossWeight = args.FeatureWeight,
        };
        var watch = Stopwatch.StartNew();
        float lastLoss = float.NaN, lastPixel = float.NaN;
        using var encoder = new BootMaePretrainer(architecture, settings).Train(
            new InMemoryImageSource(trainPixels, null, data.Train.Count, 1, 28, seed: 1, shuffle: true),
            m => { lastLoss = m.Loss; lastPixel = m.PixelLoss ?? float.NaN; });
        double pretrainSeconds = watch.Elapsed.TotalSeconds;

        // Linear probe on 2,000 labelled training images (200 per class) and the 2,000 test images.
        var probeTrain = Enumerable.Range(0, data.Train.Count).Where(i => data.Train.Indices[i] % Math.Max(1, args.TrainPerClass / 200) == 0).Take(2000).ToArray();
        float[] Features(FashionMnistSplit split, int[] rows)
        {
            var pixels = new float[rows.Length * 28 * 28];
            for (int i = 0; i < rows.Length; i++)
            {
                split.GetImage(rows[i]).CopyTo(pixels, i * 28 * 28);
            }

            var embedded = new List<float>();
            for (int start = 0; start < rows.Length; start += 256)
            {
                int n = Math.Min(256, rows.Length - start);
                embedded.AddRange(encoder.Embed(pixels.AsSpan(start * 784, n * 784).ToArray(), n, BootMaePooling.Mean, architecture.Depth - 1, BootMaePrecision.Float32));
            }

            return embedded.ToArray();
        }

        // ML.NET's default regularization (not the evaluation's tuned probe): this command compares pretrainings of one
        // network with each other, and its earlier figures (docs/benchmarks.md) were measured so.
        var testRows = Enumerable.Range(0, data.Test.Count).ToArray();
        var probe = Evaluation.Probe(Features(data.Train, probeTrain), probeTrain.Select(r => (int)data.Train.Labels[r]).ToArray(),
            Features(data.Test, testRows), testRows.Select(r => (int)data.Test.Labels[r]).ToArray(), architecture.EmbedDim, seed: 1, tuned: false);
        return new
        {
            preset = args.Preset, mode = args.Mode.ToString(), norm_pix = args.NormPixTarget, feature_weight = args.FeatureWeight, epochs = args.Epochs, batch = args.Batch, base_lr = args.LearningRate,
            images = data.Train.Count, final_loss = lastLoss, final_pixel_loss = lastPixel,
            probe_accuracy = Math.Round(probe.Test, 4), pretrain_seconds = Math.Round(pretrainSeconds, 1),
        };
    }
}

internal static class PretrainRun
{
    public static void Run(Arguments args)
    {
        var architecture = args.Architecture;
        var source = Data.Source(architecture, args.TrainPerClass * 10, args.TrainPerClass);
        var settings = new BootMaePretrainerSettings
        {
            Mode = args.Mode, MaxEpochs = args.Epochs, BatchSize = args.Batch, Device = BootMaeDevice.Auto, Precision = args.Precision,
            CheckpointDirectory = args.CheckpointDirectory, LogEveryNSteps = 20, Seed = 1, ReconstructionPreviewPath = args.PreviewPath,
        };
        var reports = new List<BootMaeTrainingMetrics>();
        Console.WriteLine($"Pretraining {args.Mode} on {source.Count} embedded Fashion-MNIST images, preset {args.Preset}, {args.Epochs} epochs, batch {args.Batch}.");
        using var encoder = new BootMaePretrainer(architecture, settings).Train(source, m =>
        {
            // The curve turns these epoch-to-date means into means over each interval between reports.
            reports.Add(m);
            if (m.IsEpochEnd)
            {
                // Finish the live progress line first.
                Console.WriteLine($"\repoch {m.Epoch + 1}/{args.Epochs}: {m}");
            }
            else
            {
                Console.Write($"\r  step {m.Step}/{m.TotalSteps}  loss {m.Loss:F4}  {m.ImagesPerSecond:F0} img/s  ETA {m.Eta:hh\\:mm\\:ss}   ");
            }
        }, line => { if (!line.Contains(" epoch ", StringComparison.Ordinal)) { Console.WriteLine(line); } });
        if (args.CheckpointDirectory is not null)
        {
            var path = Path.Combine(args.CheckpointDirectory, "encoder.bootmae");
            encoder.Save(path);
            Console.WriteLine($"Encoder saved to {path}");
        }

        if (args.CurvePath is not null)
        {
            Console.WriteLine($"Training curves: {Microsoft.ML.BootMae.Visualization.BootMaePictures.TrainingCurves(reports, args.CurvePath, $"BootMAE pretraining, {args.Preset}")}");
        }
    }
}
