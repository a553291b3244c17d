using System.CommandLine;
using BootMae.Samples;
using BootMae.Samples.BringYourOwnImages;
using BootMae.Samples.DeployOnnx;
using BootMae.Samples.Featurize;
using BootMae.Samples.Quickstart;
using Microsoft.ML.BootMae.Benchmarks;
using Microsoft.VisualStudio.TestTools.UnitTesting;

namespace Microsoft.ML.BootMae.SamplesTests;

/// <summary>The samples' and the benchmark app's command lines (System.CommandLine): help, defaults, errors, exit codes.</summary>
[TestClass]
public sealed class CommandLineTests
{
    public static IEnumerable<object[]> Samples() =>
    [
        ["quickstart", new[] { "--epochs", "--finetune-epochs", "--few-label-epochs", "--output", "--quick", "--no-probe", "--finetune-augment", "--resume" }],
        ["featurize", new[] { "--encoder", "--epochs", "--queries", "--output", "--quick", "--resume" }],
        ["byoi", new[] { "--images", "--mode", "--unlabeled", "--preset", "--epochs", "--batch", "--encoder", "--model", "--predict", "--make-example", "--resume" }],
        ["deploy", new[] { "--encoder", "--epochs", "--output", "--serve", "--images", "--quick" }],
    ];

    [TestMethod]
    [DynamicData(nameof(Samples))]
    public void HelpListsEveryOptionWithItsDefault(string sample, string[] options)
    {
        var (code, output, error) = RunSample(sample, "--help");
        Assert.AreEqual(0, code, error);
        foreach (var option in options)
        {
            StringAssert.Contains(output, "  " + option, $"{sample} --help");
        }

        StringAssert.Contains(output, "[default: ", sample);
        Assert.AreEqual(string.Empty, error);
    }

    [TestMethod]
    public void HelpShowsTheDefaultsTheSamplesUse()
    {
        var help = RunSample("quickstart", "--help").Output;
        StringAssert.Contains(help, $"[default: {QuickstartSettings.Default.PretrainEpochs}]");
        StringAssert.Contains(help, $"(--quick: {QuickstartSettings.Quick.PretrainEpochs})");
        StringAssert.Contains(RunSample("byoi", "--help").Output, "--preset <small28|tiny28|small32|vit-tiny16|vit-small16|vit-base16>");
    }

    [TestMethod]
    [DataRow("quickstart", "--epochs x", "--epochs needs a whole number, not 'x'")]
    [DataRow("quickstart", "--epochs 0", "--epochs must be between 1 and 10000, not 0")]
    [DataRow("quickstart", "--epoch 3", "'--epoch'")]
    [DataRow("quickstart", "oops", "'oops'")]
    [DataRow("quickstart", "--quick yes", "yes")]
    [DataRow("byoi", "--mode train", "--mode 'train' is not known: use one of finetune, pretrain")]
    [DataRow("byoi", "--preset huge", "small28")]
    [DataRow("byoi", "--batch 5000", "between 1 and 4096")]
    [DataRow("featurize", "--encoder missing.bootmae", "no file")]
    [DataRow("featurize", "--queries 11", "between 1 and 10")]
    [DataRow("deploy", "--serve missing.zip --images x.tsv", "no file")]
    [DataRow("deploy", "--images x.tsv", "only read with --serve")]
    public void AWrongValueGivesOneLineAndExitCode2(string sample, string args, string expected)
    {
        var (code, output, error) = RunSample(sample, args.Split(' '));
        Assert.AreEqual(SampleCommandLine.UsageExitCode, code, error);
        Assert.AreEqual(string.Empty, output);
        var lines = error.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.HasCount(1, lines, error);
        Assert.StartsWith("error: ", lines[0]);
        StringAssert.Contains(lines[0], expected);
    }

    [TestMethod]
    public void OptionsGiveTheSettingsTheOldParserGave()
    {
        var quickstart = new QuickstartCommandLine();
        var quick = quickstart.Settings(quickstart.Command.Parse(["--quick", "--epochs", "7"]));
        Assert.AreEqual(7, quick.PretrainEpochs);
        Assert.AreEqual(QuickstartSettings.Quick.FineTuneEpochs, quick.FineTuneEpochs, "--quick's default when not given");
        Assert.AreEqual(QuickstartSettings.Quick.OutputDirectory, quick.OutputDirectory);
        var full = quickstart.Settings(quickstart.Command.Parse(["--no-probe"]));
        Assert.AreEqual(QuickstartSettings.Default with { LinearProbe = false }, full);
        Assert.IsFalse(full.FineTuneAugment, "fine-tuning augmentation is off by default");
        Assert.IsTrue(quickstart.Settings(quickstart.Command.Parse(["--finetune-augment"])).FineTuneAugment);

        var byoi = new ByoiCommandLine();
        var settings = byoi.Settings(byoi.Command.Parse(["--images", "dir", "--mode", "PRETRAIN", "--preset", "tiny28", "--predict", "a.png", "b.png", "--batch", "8"]));
        Assert.AreEqual("pretrain", settings.Mode);
        Assert.AreEqual(BootMaeArchitecture.Tiny28, settings.Architecture);
        CollectionAssert.AreEqual(new[] { "a.png", "b.png" }, settings.Predict.ToArray());
        Assert.AreEqual(8, settings.BatchSize);
        Assert.AreEqual(new ByoiSettings().ModelPath, settings.ModelPath);
    }

    [TestMethod]
    public void ASampleErrorAfterParsingIsOneLineToo()
    {
        var (code, _, error) = RunSample("byoi", "--epochs", "1");
        Assert.AreEqual(2, code);
        Assert.AreEqual("error: --images DIR is required (or --model OUT.zip of a trained classifier with --predict FILE... to classify without training).", error.Trim());
    }

    [TestMethod]
    public void BenchmarkHelpListsCommandsButNotTheHiddenProbe()
    {
        var (code, output, _) = RunBenchmark("--help");
        Assert.AreEqual(0, code);
        foreach (var command in new[] { "step", "compare", "profile", "ops", "gpucheck", "probe", "evaluate", "onnx", "multipass", "pretrain" })
        {
            StringAssert.Contains(output, "  " + command + " ");
        }

        Assert.DoesNotContain("reliability-probe", output);
        StringAssert.Contains(RunBenchmark("pretrain", "--help").Output, "--checkpoint-dir <DIR>");
        StringAssert.Contains(RunBenchmark("compare", "--help").Output, "--rounds <N>");
        StringAssert.Contains(RunBenchmark("step", "--help").Output, "--precision <bf16|bfloat16|mixed|bf16-mixed|fp32|float32>");
    }

    [TestMethod]
    [DataRow("nope", "'nope'")]
    [DataRow("step --batch x", "--batch needs a whole number, not 'x'")]
    [DataRow("step --warmup 0", "--warmup must be between 1 and")]
    [DataRow("compare --warmup 0", "--warmup must be between 1 and")]
    [DataRow("evaluate --decoder-depth 0", "--decoder-depth must be between 1 and")]
    [DataRow("step --decoder-depth 0", "--decoder-depth must be between 1 and")]
    [DataRow("step --precision fp16", "use bf16, bfloat16, mixed, bf16-mixed, fp32, float32")]
    [DataRow("probe --norm-pix maybe", "'maybe'")]
    [DataRow("evaluate --seeds 1,x", "'x' is not a whole number")]
    [DataRow("evaluate --finetune 100", "LABELS:EPOCHS")]
    [DataRow("evaluate --methods pixels,foo", "'foo' is not one of pixels, random, bootmae, mae")]
    [DataRow("evaluate --masking grid", "blockfill")]
    public void BenchmarkWrongValuesGiveOneLineAndExitCode2(string args, string expected)
    {
        var (code, output, error) = RunBenchmark(args.Split(' '));
        Assert.AreEqual(2, code, error);
        Assert.AreEqual(string.Empty, output);
        Assert.HasCount(1, error.Split('\n', StringSplitOptions.RemoveEmptyEntries), error);
        StringAssert.Contains(error, expected);
    }

    [TestMethod]
    public void EvaluateParsesTheOptionsTheDocsUse()
    {
        EvaluationArguments? seen = null;
        var root = new RootCommand { EvaluationArguments.CreateCommand(a => { seen = a; return 0; }) };
        string[] args = ["evaluate", "--seeds", "1,2", "--methods", "pixels,random", "--pretrain-steps", "1500", "--mae-steps", "2000", "--finetune", "100:60,1000:30",
            "--from-json", "a.jsonl,b.jsonl", "--md", "x.md", "--plots", "dir", "--probe", "false", "--tuned-probe", "false", "--masking", "Block", "--feature-norm", "batch", "--lr", "1.5e-3", "--precision", "fp32", "--preset", "tiny28"];
        Assert.AreEqual(0, Benchmarks.CommandLine.Invoke(root, args, TextWriter.Null, TextWriter.Null));
        Assert.IsNotNull(seen);
        CollectionAssert.AreEqual(new[] { 1, 2 }, seen.Seeds);
        Assert.IsTrue(seen.Methods.SetEquals(["pixels", "random"]));
        Assert.AreEqual(1500L, seen.PretrainSteps);
        Assert.AreEqual(2000L, seen.MaePretrainSteps);
        CollectionAssert.AreEqual(new[] { (100, 60), (1000, 30) }, seen.FineTune);
        CollectionAssert.AreEqual(new[] { "a.jsonl", "b.jsonl" }, seen.FromJson);
        Assert.AreEqual("x.md", seen.MarkdownPath);
        Assert.AreEqual("dir", seen.PlotsFolder);
        Assert.IsFalse(seen.Probe);
        Assert.IsFalse(seen.TunedProbe);
        Assert.AreEqual(BootMaeMasking.Block, seen.Masking);
        Assert.AreEqual(BootMaeFeatureTargetNormalization.BatchStandardized, seen.FeatureNorm);
        Assert.AreEqual(1.5e-3, seen.LearningRate);
        Assert.AreEqual(BootMaePrecision.Float32, seen.Precision);
        Assert.AreEqual(BootMaeArchitecture.Tiny28, seen.Architecture);
        Assert.AreEqual(0, Benchmarks.CommandLine.Invoke(root, ["evaluate", "--decoder-depth", "4"], TextWriter.Null, TextWriter.Null));
        Assert.AreEqual(BootMaeArchitecture.Small28 with { DecoderDepth = 4 }, seen.Architecture, "--decoder-depth changes the preset's decoders only");
        Assert.IsFalse(seen.FineTuneAugment, "unchanged defaults: fine-tuning augmentation off (chosen on held-out images)");
        Assert.AreEqual(0, Benchmarks.CommandLine.Invoke(root, ["evaluate", "--ft-augment", "true"], TextWriter.Null, TextWriter.Null));
        Assert.IsTrue(seen.FineTuneAugment);
        Assert.AreEqual(10.0, seen.PretrainMinutes);

        Assert.AreEqual(0, Benchmarks.CommandLine.Invoke(root, ["evaluate", "--finetune", "none"], TextWriter.Null, TextWriter.Null));
        Assert.IsEmpty(seen.FineTune);
        Assert.AreEqual(0, Benchmarks.CommandLine.Invoke(root, ["evaluate"], TextWriter.Null, TextWriter.Null));
        CollectionAssert.AreEqual(new[] { (100, 60), (1000, 30) }, seen.FineTune, "defaults");
        CollectionAssert.AreEqual(new[] { 1, 2 }, seen.Seeds);
        Assert.IsTrue(seen.Probe);
        Assert.AreEqual(BootMaeArchitecture.Small28, seen.Architecture, "default preset");
        Assert.IsTrue(seen.TunedProbe, "the probe's L2 is tuned by default");
        Assert.IsNull(seen.FromJson, "no --from-json: a full run, not a merge");
        Assert.IsNull(seen.Precision, "the pretrainer's default precision");
        Assert.HasCount(4, seen.Methods);
    }

    [TestMethod]
    public void BenchmarkArgumentsKeepTheirDefaultsAndReadEveryOption()
    {
        var o = new ArgumentOptions();
        var root = BenchmarkCommands.Create();
        var defaults = o.Bind(root.Parse([]), "step");
        Assert.AreEqual(("tiny28", BootMaeMode.BootMae, 128, 12, 3, BootMaePrecision.BFloat16, 2), (defaults.Preset, defaults.Mode, defaults.Batch, defaults.Steps, defaults.Warmup, defaults.Precision, defaults.Rounds));
        Assert.IsNull(defaults.Threads);
        Assert.IsNull(defaults.DeviceOption);
        Assert.AreEqual(BootMaeArchitecture.Tiny28, defaults.Architecture, "no --decoder-depth: the preset as it is");

        // The options of each command are their own instances in Create(); parse with a fresh set to read them back.
        var command = new System.CommandLine.Command("compare");
        foreach (var option in o.Step.Append(o.Rounds))
        {
            command.Add(option);
        }

        var parsed = o.Bind(new RootCommand { command }.Parse(["compare", "--device", "cuda", "--preset", "small32", "--batch", "1024", "--steps", "20", "--warmup", "5", "--rounds", "3", "--threads", "2", "--precision", "fp32", "--mode", "MAE", "--teacher-fraction", "0.5", "--decoder-depth", "1"]), "compare");
        Assert.AreEqual((BootMaeDevice.Cuda, "small32", 1024, 20, 5, 3, 2, BootMaePrecision.Float32, BootMaeMode.Mae, 0.5),
            (parsed.DeviceOption, parsed.Preset, parsed.Batch, parsed.Steps, parsed.Warmup, parsed.Rounds, parsed.Threads, parsed.Precision, parsed.Mode, parsed.TeacherFraction));
        Assert.AreEqual(BootMaeArchitecture.Small32 with { DecoderDepth = 1 }, parsed.Architecture, "--decoder-depth changes the preset's BootMAE decoders only");
    }

    private static (int Code, string Output, string Error) RunSample(string sample, params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        var byoi = new ByoiCommandLine();
        RootCommand command = sample switch
        {
            "quickstart" => new QuickstartCommandLine().Command,
            "featurize" => new FeaturizeCommandLine().Command,
            "byoi" => byoi.Command,
            "deploy" => new DeployOnnxCommandLine().Command,
            _ => throw new ArgumentOutOfRangeException(nameof(sample)),
        };
        int code = SampleCommandLine.Run(command, args, (parse, _) =>
        {
            if (sample == "byoi")
            {
                // The sample's own checks after parsing (no training: --images is missing).
                ByoiSample.Run(byoi.Settings(parse), TextWriter.Null);
            }

            return 0;
        }, output, error, CancellationToken.None);
        return (code, output.ToString(), error.ToString());
    }

    private static (int Code, string Output, string Error) RunBenchmark(params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        int code = Benchmarks.CommandLine.Invoke(BenchmarkCommands.Create(), args, output, error);
        return (code, output.ToString(), error.ToString());
    }
}
