using System.Diagnostics;
using System.Text.Json;
using Microsoft.ML.BootMae.Interop;
using Microsoft.ML.BootMae.Modules;
using Microsoft.ML.BootMae.Training;
using Microsoft.VisualStudio.TestTools.UnitTesting;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Tests;

/// <summary>
/// Checkpoint-level interop with the official BootMAE code (docs/scale-out.md): our export loaded by PyTorch into the
/// official model class with strict=True and matched forward for forward, a checkpoint torch.save wrote imported here,
/// and export → import → continue bit-identical to continuing in place. The PyTorch side is
/// tools/check_official_checkpoint.py: the export check runs it live with Debian's /usr/bin/python3 (python3-torch, which
/// ./build.sh fixtures installs) and is inconclusive only where that interpreter or torch is missing; the import test reads
/// the checkpoint it wrote into TestData/official.
/// </summary>
[TestClass]
public sealed class OfficialCheckpointTests
{
    private const string Python = "/usr/bin/python3";

    private static BootMaeArchitecture Tiny => PretrainerTests.Tiny;

    private static string Script => Path.Combine(DocSnippetTests.RepoRoot(), "tools", "check_official_checkpoint.py");

    private static string TempDirectory()
    {
        var path = Path.Combine(Path.GetTempPath(), "bootmae-official-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(path);
        return path;
    }

    private static InMemoryImageSource Source(int count = 40, int seed = 11)
    {
        var random = new Random(seed);
        var pixels = new float[count * 28 * 28];
        for (int i = 0; i < pixels.Length; i++)
        {
            // Smooth-ish images (a ramp per image plus noise), so the pixel target is not pure noise.
            int image = i / (28 * 28);
            pixels[i] = (float)Math.Clamp(0.5 + (0.3 * Math.Sin((i % 28) * 0.2 + image)) + (0.1 * random.NextDouble()), 0, 1);
        }

        return new InMemoryImageSource(pixels, null, count, 1, 28, seed, shuffle: true);
    }

    private static BootMaePretrainerSettings Settings(int epochs = 3) => new()
    {
        MaxEpochs = epochs, BatchSize = 16, LearningRate = 4e-3, Seed = 5, Device = BootMaeDevice.Cpu,
        Precision = BootMaePrecision.Float32, LogEveryNSteps = 1000, CheckpointsToKeep = 20,
    };

    private static (int ExitCode, string Output) RunPython(params string[] arguments)
    {
        if (!File.Exists(Python))
        {
            Assert.Inconclusive($"{Python} is missing; install Debian's python3-torch (./build.sh fixtures) to run the PyTorch side.");
        }

        var probe = Start("-c", "import torch");
        if (probe.ExitCode != 0)
        {
            Assert.Inconclusive($"{Python} cannot import torch ({probe.Output.Trim()}); install Debian's python3-torch (./build.sh fixtures).");
        }

        return Start(new[] { Script }.Concat(arguments).ToArray());
    }

    private static (int ExitCode, string Output) Start(params string[] arguments)
    {
        var info = new ProcessStartInfo(Python) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in arguments)
        {
            info.ArgumentList.Add(a);
        }

        info.Environment["OMP_NUM_THREADS"] = "1";
        using var process = Process.Start(info)!;
        var stderr = process.StandardError.ReadToEndAsync();
        string stdout = process.StandardOutput.ReadToEnd();
        if (!process.WaitForExit(300_000))
        {
            process.Kill(entireProcessTree: true);
            Assert.Fail($"{Python} {string.Join(' ', arguments)} did not finish in 5 minutes.");
        }

        return (process.ExitCode, stdout + stderr.Result);
    }

    // A fresh student (official layout), its teacher and optimizer, as the pretrainer builds them.
    private static (BootMaeNetwork Network, MomentumTeacher Teacher, OwnedAdamW Optimizer) NewRun(double weightDecay)
    {
        var network = new BootMaeNetwork(Tiny, OfficialSettings.Create());
        var teacher = new MomentumTeacher(network.Encoder);
        var optimizer = ParameterGroups.CreateAdamW(network, 1e-3, weightDecay);
        return (network, teacher, optimizer);
    }

    private static Dictionary<string, int> OptimizerIndex(BootMaeNetwork network)
    {
        var (decay, noDecay) = ParameterGroups.Split(network);
        return decay.Concat(noDecay).Select((x, i) => (BootMaeNetwork.ToReferenceKey(x.Name), i)).ToDictionary(x => x.Item1, x => x.i);
    }

    [TestMethod]
    public void ExportLoadsStrictlyIntoTheOfficialModelAndMatchesItsForward()
    {
        var dir = TempDirectory();
        var settings = Settings(epochs: 2);
        settings.CheckpointDirectory = Path.Combine(dir, "checkpoints");
        using (new BootMaePretrainer(Tiny, settings).Train(Source()))
        {
        }

        var log = new List<string>();
        var (pth, twin) = BootMaePretrainer.ExportOfficialCheckpoint(settings.CheckpointDirectory, Path.Combine(dir, "official.pth"), log.Add);
        Assert.IsTrue(File.Exists(pth) && File.Exists(twin));
        Assert.IsTrue(log.Any(l => l.Contains("--resume starts at epoch 2", StringComparison.Ordinal)), string.Join("\n", log));

        // Our forward, from the checkpoint folder itself (not through the export), on fixed images and masks.
        var (network, teacher, optimizer) = NewRun(settings.WeightDecay);
        using var n = network;
        using var t = teacher;
        using var o = optimizer;
        PretrainingCheckpoint.Load(Path.Combine(settings.CheckpointDirectory, "step-00000006"), network, teacher, optimizer);
        using var scope = NewDisposeScope();
        const int B = 3, N = 16, Keep = 4;
        var random = new Random(3);
        var ids = Enumerable.Range(0, B).SelectMany(_ => Enumerable.Range(0, N).OrderBy(_ => random.Next()).Select(i => (long)i)).ToArray();
        using var masks = MaskBatch.FromShuffle(ids, B, N, Keep);
        var generator = new Generator(7);
        using var two = 2.0.ToScalar();
        using var one = 1.0.ToScalar();
        var images = rand(new long[] { B, 1, 28, 28 }, generator: generator).mul(two).sub(one);
        var forward = network.Forward(images, masks);
        var expected = new Dictionary<string, Tensor>
        {
            ["images"] = images,
            ["idx_shuffle"] = tensor(ids, new long[] { B, N }),
            ["mask_len"] = tensor((long)(N - Keep)),
            ["epoch"] = tensor(1L),
            ["pixels"] = forward.Pixels,
            ["features"] = forward.Features!,
            ["teacher"] = teacher.Forward(images),
        };
        foreach (var (name, i) in OptimizerIndex(network))
        {
            var (step, m, v) = optimizer.StateOf(i);
            expected["optimizer.step." + name] = tensor(step);
            expected["optimizer.exp_avg." + name] = m;
            expected["optimizer.exp_avg_sq." + name] = v;
        }

        var expectedPath = Path.Combine(dir, "expected.safetensors");
        Safetensors.Save(expectedPath, expected);

        var (exitCode, output) = RunPython("check", pth, expectedPath);
        Console.WriteLine(output);

        Assert.AreEqual(0, exitCode, output);
        StringAssert.Contains(output, "model: <All keys matched successfully>");
        StringAssert.Contains(output, "model_ema: <All keys matched successfully>");
        StringAssert.Contains(output, "\nOK");

        // With a checkout of LightDXY/BootMAE (and timm) named in BOOTMAE_OFFICIAL_CHECKOUT, the same check runs on the
        // official module file itself.
        if (Environment.GetEnvironmentVariable("BOOTMAE_OFFICIAL_CHECKOUT") is { Length: > 0 } checkout)
        {
            var (officialExit, officialOutput) = RunPython("check", pth, expectedPath, "--official-checkout", checkout);
            Console.WriteLine(officialOutput);
            Assert.AreEqual(0, officialExit, officialOutput);
        }
    }

    [TestMethod]
    public void ACheckpointTorchSaveWroteImportsWithItsWeightsMomentsAndEpoch()
    {
        // TestData/official (./build.sh fixtures: check_official_checkpoint.py write): torch.save of model, optimizer after two
        // real AdamW steps (torch 1.13: tensor step counts), epoch 3, scaler, an argparse.Namespace as args, and model_ema,
        // as utils.save_model writes them; plus that model's outputs on fixed images and masks.
        var fixtures = Path.Combine(AppContext.BaseDirectory, "TestData", "official");
        var pth = Path.Combine(fixtures, "checkpoint-3.pth");
        var expectedPath = Path.Combine(fixtures, "expected.safetensors");

        var (network, teacher, optimizer) = NewRun(0.05);
        using var n = network;
        using var t = teacher;
        using var o = optimizer;
        var log = new List<string>();
        var position = OfficialCheckpoint.Load(pth, network, teacher, loadTeacher: true, optimizer, stepsPerEpoch: 5, totalSteps: 50, seed: 1, log.Add);

        // epoch 3 finished: this run continues at epoch 4, step 4·5.
        Assert.AreEqual(new TrainingPosition(20, 4, 0, 50, 1), position);
        using var scope = NewDisposeScope();
        var expected = Safetensors.Load(expectedPath);
        int maskLen = (int)expected["mask_len"].item<long>();
        var idx = expected["idx_shuffle"];
        using var masks = MaskBatch.FromShuffle(idx.data<long>().ToArray(), (int)idx.shape[0], (int)idx.shape[1], (int)idx.shape[1] - maskLen);
        var forward = network.Forward(expected["images"], masks);
        TensorAssert.Close(expected["pixels"], forward.Pixels, 1e-4, 1e-4, "pixel prediction");
        TensorAssert.Close(expected["features"], forward.Features!, 1e-4, 1e-4, "feature prediction");
        TensorAssert.Close(expected["teacher"], teacher.Forward(expected["images"]), 1e-4, 1e-4, "teacher target (model_ema)");
        int checkedMoments = 0;
        foreach (var (name, i) in OptimizerIndex(network))
        {
            var (step, m, v) = optimizer.StateOf(i);
            Assert.AreEqual(expected["optimizer.step." + name].item<long>(), step, name);
            TensorAssert.Equal(expected["optimizer.exp_avg." + name], m, name + " exp_avg");
            TensorAssert.Equal(expected["optimizer.exp_avg_sq." + name], v, name + " exp_avg_sq");
            checkedMoments++;
        }

        Assert.AreEqual(OfficialLayout.TrainableNames(Tiny).Count, checkedMoments);
        Assert.IsTrue(log.Any(l => l.Contains("teacher from model_ema", StringComparison.Ordinal)), string.Join("\n", log));
    }

    [TestMethod]
    [DataRow(3, ".pth", DisplayName = "epoch end, .pth")]
    [DataRow(4, ".pth", DisplayName = "mid-epoch, .pth")]
    [DataRow(4, ".safetensors", DisplayName = "mid-epoch, .safetensors twin")]
    public void ExportImportContinueIsBitIdenticalToContinuingInPlace(int exportStep, string format)
    {
        // 3 epochs × 3 steps with a checkpoint after every step; the in-place run's last checkpoint is the reference.
        var dir = TempDirectory();
        var inPlace = Settings();
        inPlace.CheckpointDirectory = Path.Combine(dir, "in-place");
        inPlace.CheckpointEveryNSteps = 1;
        using var straight = new BootMaePretrainer(Tiny, inPlace).Train(Source());

        var exportLog = new List<string>();
        var (pth, twin) = BootMaePretrainer.ExportOfficialCheckpoint(
            Path.Combine(inPlace.CheckpointDirectory, $"step-{exportStep:D8}"), Path.Combine(dir, "handover.pth"), exportLog.Add);
        // Step 3 ends epoch 0, so the official code goes on with epoch 1; step 4 is inside epoch 1, which it redoes.
        Assert.IsTrue(exportLog.Any(l => l.Contains("--resume starts at epoch 1", StringComparison.Ordinal)), string.Join("\n", exportLog));
        var continued = Settings();
        continued.CheckpointDirectory = Path.Combine(dir, "continued");
        continued.CheckpointEveryNSteps = 1;
        continued.InitialState = format == ".pth" ? pth : twin;
        var steps = new List<long>();
        var log = new List<string>();
        continued.LogEveryNSteps = 1;
        using var resumed = new BootMaePretrainer(Tiny, continued).Train(Source(), m => steps.Add(m.Step), log.Add);

        Assert.AreEqual(exportStep + 1, steps.Min(), "the imported run continues right after the exported step");
        Assert.IsTrue(log.Any(l => l.Contains("Initial state from", StringComparison.Ordinal)), string.Join("\n", log));
        foreach (var file in new[] { "student.bin", "teacher.bin", "optimizer.bin" })
        {
            CollectionAssert.AreEqual(
                File.ReadAllBytes(Path.Combine(inPlace.CheckpointDirectory, "step-00000009", file)),
                File.ReadAllBytes(Path.Combine(continued.CheckpointDirectory, "step-00000009", file)),
                $"{file} after the last step");
        }
    }

    [TestMethod]
    public void AnEpochBasedImportContinuesAtTheNextEpoch()
    {
        // A file the official code re-saved keeps only 'epoch': the run goes on at the start of the next epoch.
        var dir = TempDirectory();
        var first = Settings(epochs: 1);
        first.CheckpointDirectory = Path.Combine(dir, "first");
        using (new BootMaePretrainer(Tiny, first).Train(Source()))
        {
        }

        var (_, twin) = BootMaePretrainer.ExportOfficialCheckpoint(first.CheckpointDirectory, Path.Combine(dir, "x.pth"));
        using (var scope = NewDisposeScope())
        {
            var flat = Safetensors.Load(twin);
            flat.Remove("bootmae.position");
            Safetensors.Save(Path.Combine(dir, "epoch-only.safetensors"), flat);
        }

        var next = Settings(epochs: 3);
        next.InitialState = Path.Combine(dir, "epoch-only.safetensors");
        next.LogEveryNSteps = 1;
        var steps = new List<long>();
        using (new BootMaePretrainer(Tiny, next).Train(Source(), m => steps.Add(m.Step)))
        {
        }

        Assert.AreEqual(4, steps.Min(), "epoch 0 finished (3 steps): the run continues at step 4 of 9");
        Assert.AreEqual(9, steps.Max());
    }

    [TestMethod]
    public void RunsOutsideTheOfficialLayoutAreRefusedWithTheReason()
    {
        var dir = TempDirectory();
        var mae = Settings(epochs: 1);
        mae.Mode = BootMaeMode.Mae;
        mae.CheckpointDirectory = Path.Combine(dir, "mae");
        using (new BootMaePretrainer(Tiny, mae).Train(Source(16)))
        {
        }

        var error = Assert.ThrowsExactly<InvalidOperationException>(() =>
            BootMaePretrainer.ExportOfficialCheckpoint(mae.CheckpointDirectory, Path.Combine(dir, "mae.pth")));
        StringAssert.Contains(error.Message, "MAE mode");

        using var network = new BootMaeNetwork(Tiny with { RegressorHeads = 1 }, OfficialSettings.Create());
        var heads = Assert.ThrowsExactly<InvalidOperationException>(() => OfficialCheckpoint.CheckLayout(network));
        StringAssert.Contains(heads.Message, "RegressorHeads = 1");

        using var noInjection = new BootMaeNetwork(Tiny, OfficialSettings.Create(s => { s.InjectPredictor = false; }));
        var injection = Assert.ThrowsExactly<InvalidOperationException>(() => OfficialCheckpoint.CheckLayout(noInjection));
        StringAssert.Contains(injection.Message, "InjectPredictor");

        var both = Settings();
        both.InitialState = "x.pth";
        both.InitialEncoder = BootMaeEncoder.CreateRandom(Tiny, seed: 1);
        using var encoder = both.InitialEncoder;
        StringAssert.Contains(Assert.ThrowsExactly<ArgumentException>(() => both.Validate()).Message, "InitialEncoder");
    }

    [TestMethod]
    public void AnInitialStateAtOrPastTheEndOfTheRunSaysToRaiseMaxEpochs()
    {
        var dir = TempDirectory();
        var first = Settings(epochs: 2);
        first.CheckpointDirectory = Path.Combine(dir, "first");
        using (new BootMaePretrainer(Tiny, first).Train(Source()))
        {
        }

        var (pth, _) = BootMaePretrainer.ExportOfficialCheckpoint(first.CheckpointDirectory, Path.Combine(dir, "x.pth"));
        var shorter = Settings(epochs: 2);
        shorter.InitialState = pth;
        var error = Assert.ThrowsExactly<InvalidOperationException>(() => new BootMaePretrainer(Tiny, shorter).Train(Source()));
        StringAssert.Contains(error.Message, "Raise MaxEpochs");

        var missing = Settings();
        missing.InitialState = Path.Combine(dir, "none.pth");
        StringAssert.Contains(Assert.ThrowsExactly<InvalidDataException>(() => new BootMaePretrainer(Tiny, missing).Train(Source())).Message, "does not exist");
    }
}
