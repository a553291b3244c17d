using System.Reflection;
using Microsoft.VisualStudio.TestTools.UnitTesting;
using TorchSharp;

namespace Microsoft.ML.BootMae.Tests;

/// <summary>
/// The MLContext's own settings reach the BootMAE trainers: <c>CancelExecution()</c> stops pretraining and fine-tuning
/// before the next step and keeps the checkpoint, and <c>GpuDeviceId</c>/<c>FallbackToCpu</c> pick the device when the
/// Options leave it unset. Tiny 8×8 images and a 2-block network keep each run to a few steps.
/// </summary>
[TestClass]
[DoNotParallelize]
public sealed class MlContextSettingsTests
{
    private const int CancelAtStep = 3;

    /// <summary>
    /// <c>MLContext.CancelExecution()</c> is internal in Microsoft.ML 5.0.1 (<c>[BestFriend]</c>: AutoML and ML.NET's
    /// own packages call it), so the test calls it as they do, by name.
    /// </summary>
    private static void CancelExecution(MLContext ml)
    {
        var method = typeof(MLContext).GetMethod("CancelExecution", BindingFlags.Instance | BindingFlags.NonPublic | BindingFlags.Public);
        Assert.IsNotNull(method, "MLContext.CancelExecution() is gone: ML.NET changed; revisit BootMaeHost.TryGetCancellationProbe.");
        method.Invoke(ml, null);
    }

    private static string NewFolder() => Path.Combine(Path.GetTempPath(), $"bootmae-ctx-{Guid.NewGuid():N}");

    private static BootMaePretrainingEstimator.Options Pretrain(string? checkpoints, Action<BootMaeTrainingMetrics> metrics, List<string>? lines = null) => new()
    {
        Architecture = MlNetTestData.Tiny8, MaxEpochs = 50, MaxSteps = 100, BatchSize = 2, Seed = 1, LogEveryNSteps = 1,
        CheckpointDirectory = checkpoints, MetricsCallback = metrics, LogCallback = lines is null ? null : lines.Add,
        ResumeFromCheckpoint = checkpoints is not null && lines is not null,
    };

    private static BootMaeImageClassificationTrainer.Options Classify(BootMaeEncoder encoder, string? checkpoints, Action<BootMaeTrainingMetrics> metrics, List<string>? lines = null) => new()
    {
        Encoder = encoder, MaxEpochs = 50, MaxSteps = 100, BatchSize = 2, Seed = 1, LogEveryNSteps = 1,
        CheckpointDirectory = checkpoints, MetricsCallback = metrics, LogCallback = lines is null ? null : lines.Add,
        ResumeFromCheckpoint = checkpoints is not null && lines is not null,
    };

    private static IEstimator<ITransformer> PretrainPipeline(MLContext ml, MlNetTestData files, BootMaePretrainingEstimator.Options options) =>
        ml.Transforms.LoadRawImageBytes("Image", files.Folder, "ImagePath").Append(ml.Transforms.BootMaePretrain(options));

    private static IEstimator<ITransformer> ClassifyPipeline(MLContext ml, MlNetTestData files, BootMaeImageClassificationTrainer.Options options) =>
        ml.Transforms.Conversion.MapValueToKey("Label")
            .Append(ml.Transforms.LoadRawImageBytes("Image", files.Folder, "ImagePath"))
            .Append(ml.MulticlassClassification.Trainers.BootMaeImageClassification(options));

    /// <summary>Fits, expecting the cancellation, and returns the steps the metrics saw.</summary>
    private static long FitUntilCancelled(MLContext ml, IEstimator<ITransformer> pipeline, IDataView rows, List<long> steps, string? checkpoints)
    {
        var ex = Assert.ThrowsExactly<OperationCanceledException>(() => pipeline.Fit(rows));
        StringAssert.Contains(ex.Message, "MLContext.CancelExecution()");
        if (checkpoints is not null)
        {
            StringAssert.Contains(ex.Message, checkpoints);
        }

        return steps.Max();
    }

    [TestMethod]
    public void CancelExecutionStopsPretrainingWithinOneStepAndKeepsTheCheckpoint()
    {
        using var files = new MlNetTestData();
        var checkpoints = Path.Combine(files.Folder, "checkpoints");
        var ml = new MLContext(seed: 1);
        var rows = files.ColourRows(ml, 12); // 6 steps per epoch: step 3 is mid-epoch
        var steps = new List<long>();
        var options = Pretrain(checkpoints, m =>
        {
            steps.Add(m.Step);
            if (m.Step == CancelAtStep)
            {
                CancelExecution(ml);
            }
        });

        Assert.AreEqual(CancelAtStep, FitUntilCancelled(ml, PretrainPipeline(ml, files, options), rows, steps, checkpoints), "no step may run after CancelExecution()");
        CollectionAssert.AreEqual(new[] { $"step-{CancelAtStep:D8}" }, Directory.GetDirectories(checkpoints).Select(Path.GetFileName).ToArray(),
            "the checkpoint written on cancellation, at the step reached");

        // The kept checkpoint resumes (a fresh MLContext: a cancelled one stays cancelled).
        var again = new MLContext(seed: 1);
        var lines = new List<string>();
        var resumedSteps = new List<long>();
        var resumed = Pretrain(checkpoints, m =>
        {
            resumedSteps.Add(m.Step);
            CancelExecution(again);
        }, lines);
        Assert.AreEqual(CancelAtStep + 1, FitUntilCancelled(again, PretrainPipeline(again, files, resumed), files.ColourRows(again, 12), resumedSteps, checkpoints));
        Assert.IsTrue(lines.Any(l => l.StartsWith("Resumed", StringComparison.Ordinal) && l.Contains($"at step {CancelAtStep} ", StringComparison.Ordinal)), string.Join("\n", lines));
    }

    [TestMethod]
    public void CancelExecutionStopsFineTuningWithinOneStepAndKeepsTheCheckpoint()
    {
        using var files = new MlNetTestData();
        using var encoder = BootMaeEncoder.CreateRandom(MlNetTestData.Tiny8, seed: 2);
        var checkpoints = Path.Combine(files.Folder, "checkpoints");
        var ml = new MLContext(seed: 1);
        var rows = files.ColourRows(ml, 12);
        var steps = new List<long>();
        var options = Classify(encoder, checkpoints, m =>
        {
            steps.Add(m.Step);
            if (m.Dataset == BootMaeDataset.Train && m.Step == CancelAtStep)
            {
                CancelExecution(ml);
            }
        });

        Assert.AreEqual(CancelAtStep, FitUntilCancelled(ml, ClassifyPipeline(ml, files, options), rows, steps, checkpoints), "no step may run after CancelExecution()");
        CollectionAssert.AreEqual(new[] { $"step-{CancelAtStep:D8}" }, Directory.GetDirectories(checkpoints).Select(Path.GetFileName).ToArray());

        var again = new MLContext(seed: 1);
        var lines = new List<string>();
        var resumedSteps = new List<long>();
        var resumed = Classify(encoder, checkpoints, m =>
        {
            resumedSteps.Add(m.Step);
            CancelExecution(again);
        }, lines);
        Assert.AreEqual(CancelAtStep + 1, FitUntilCancelled(again, ClassifyPipeline(again, files, resumed), files.ColourRows(again, 12), resumedSteps, checkpoints));
        Assert.IsTrue(lines.Any(l => l.StartsWith("Resumed", StringComparison.Ordinal) && l.Contains($"at step {CancelAtStep} ", StringComparison.Ordinal)), string.Join("\n", lines));
    }

    [TestMethod]
    public void CancelledContextRefusesToStartAndReturnModelOnCancellationStillApplies()
    {
        using var files = new MlNetTestData();
        using var encoder = BootMaeEncoder.CreateRandom(MlNetTestData.Tiny8, seed: 2);
        var ml = new MLContext(seed: 1);
        var rows = files.ColourRows(ml, 4);
        CancelExecution(ml);
        var steps = new List<long>();
        var ex = Assert.ThrowsExactly<OperationCanceledException>(() => PretrainPipeline(ml, files, Pretrain(null, m => steps.Add(m.Step))).Fit(rows));
        StringAssert.Contains(ex.Message, "before training started");
        // ML.NET's own MapValueToKey refuses a cancelled MLContext too ("Operation was canceled."), so prepare the rows elsewhere.
        var other = new MLContext(seed: 1);
        var otherRows = files.ColourRows(other, 4);
        var prepared = other.Transforms.Conversion.MapValueToKey("Label").Append(other.Transforms.LoadRawImageBytes("Image", files.Folder, "ImagePath"))
            .Fit(otherRows).Transform(otherRows);
        ex = Assert.ThrowsExactly<OperationCanceledException>(() => ml.MulticlassClassification.Trainers.BootMaeImageClassification(Classify(encoder, null, m => steps.Add(m.Step))).Fit(prepared));
        StringAssert.Contains(ex.Message, "before training started");
        Assert.IsEmpty(steps);

        // ReturnModelOnCancellation treats the MLContext's cancellation as it treats the token's.
        var keep = new MLContext(seed: 1);
        var kept = Classify(encoder, null, m =>
        {
            steps.Add(m.Step);
            CancelExecution(keep);
        });
        kept.ReturnModelOnCancellation = true;
        using var model = (IDisposable)ClassifyPipeline(keep, files, kept).Fit(files.ColourRows(keep, 4));
        Assert.AreEqual(1L, steps.Max());
    }

    [TestMethod]
    public void DeviceSettingsMergeOptionsOverTheMlContext()
    {
        var ml = new MLContext(seed: 1);
        var env = BootMaeHost.TryGetEnvironment(ml.Transforms);
        Assert.AreEqual(((int?)null, (bool?)false), BootMaeHost.TryGetDeviceSettings(env), "MLContext defaults: no GPU id, FallbackToCpu false");
        Assert.AreEqual(new DeviceRequest(BootMaeDevice.Auto, 0, true, null), BootMaeHost.ResolveDevice(new BootMaePretrainingEstimator.Options(), env),
            "with no MLContext.GpuDeviceId the MLContext has no say: its FallbackToCpu (false by default) does not turn off the Options' fallback");
        Assert.AreEqual(new DeviceRequest(BootMaeDevice.Cuda, 0, true, null), BootMaeHost.ResolveDevice(new BootMaePretrainingEstimator.Options { Device = BootMaeDevice.Cuda }, env));

        ml.GpuDeviceId = 1;
        ml.FallbackToCpu = false;
        Assert.AreEqual(((int?)1, (bool?)false), BootMaeHost.TryGetDeviceSettings(BootMaeHost.TryGetEnvironment(ml.MulticlassClassification.Trainers)), "the catalogs' environment holds the MLContext's values");
        var fromContext = BootMaeHost.ResolveDevice(new BootMaePretrainingEstimator.Options(), env);
        Assert.AreEqual((BootMaeDevice.Cuda, 1, false), (fromContext.Device, fromContext.GpuDeviceId, fromContext.FallbackToCpu));
        StringAssert.Contains(fromContext.Origin ?? string.Empty, "MLContext.GpuDeviceId = 1");

        // Each field the Options set wins.
        Assert.AreEqual(new DeviceRequest(BootMaeDevice.Cpu, 1, false, null), BootMaeHost.ResolveDevice(new BootMaePretrainingEstimator.Options { Device = BootMaeDevice.Cpu }, env));
        var mixed = BootMaeHost.ResolveDevice(new BootMaeImageClassificationTrainer.Options { GpuDeviceId = 0, FallbackToCpu = true }, env);
        Assert.AreEqual((BootMaeDevice.Cuda, 0, true), (mixed.Device, mixed.GpuDeviceId, mixed.FallbackToCpu));
        Assert.AreEqual(new DeviceRequest(BootMaeDevice.Cuda, 1, true, null), BootMaeHost.ResolveDevice(new BootMaePretrainingEstimator.Options { Device = BootMaeDevice.Cuda, FallbackToCpu = true }, env));

        // Without a readable environment the Options alone decide, with the old defaults.
        Assert.AreEqual(new DeviceRequest(BootMaeDevice.Auto, 0, true, null), BootMaeHost.ResolveDevice(new BootMaePretrainingEstimator.Options(), null));
    }

    [TestMethod]
    public void ClassificationTakesAnyGpuIndex()
    {
        // Classification resolves its device as pretraining does (TorchDevices.Resolve), so a GpuDeviceId other than 0
        // reaches the resolver: it trains there on a GPU machine, fails with the device count for an index that does not
        // exist, and on a machine without CUDA takes the same fallback path as pretraining.
        BootMaeRuntime.EnsureTorchLoaded();
        using var files = new MlNetTestData();
        using var encoder = BootMaeEncoder.CreateRandom(MlNetTestData.Tiny8, seed: 2);
        var ml = new MLContext(seed: 1);
        var rows = files.ColourRows(ml, 4);
        var lines = new List<string>();
        var options = Classify(encoder, null, _ => { }, lines);
        (options.MaxSteps, options.Device, options.GpuDeviceId) = (1, BootMaeDevice.Cuda, 1);
        if (torch.cuda.is_available())
        {
            options.GpuDeviceId = torch.cuda.device_count() - 1;
            using (var model = (IDisposable)ClassifyPipeline(ml, files, options).Fit(rows))
            {
            }

            Assert.IsTrue(lines.Any(l => l.Contains($"BootMAE device: cuda:{options.GpuDeviceId} ", StringComparison.Ordinal)), string.Join("\n", lines));
            options.GpuDeviceId = torch.cuda.device_count();
            var missing = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => ClassifyPipeline(ml, files, options).Fit(rows));
            StringAssert.Contains(missing.Message, $"GpuDeviceId {options.GpuDeviceId} does not exist");
            return;
        }

        options.FallbackToCpu = false;
        var error = Assert.ThrowsExactly<InvalidOperationException>(() => ClassifyPipeline(ml, files, options).Fit(rows));
        StringAssert.Contains(error.Message, "CUDA is not available");
        options.FallbackToCpu = true;
        using (var model = (IDisposable)ClassifyPipeline(ml, files, options).Fit(rows))
        {
        }

        Assert.IsTrue(lines.Any(l => l.Contains("falling back to the CPU", StringComparison.Ordinal)), string.Join("\n", lines));
        Assert.IsTrue(lines.Any(l => l.Contains("BootMAE device: cpu ", StringComparison.Ordinal)), string.Join("\n", lines));
        Assert.AreEqual(1, lines.Count(l => l.Contains("BootMAE device:", StringComparison.Ordinal)), "the engine trains on the trainer's device without resolving again");
    }

    [TestMethod]
    public void MlContextGpuWithoutFallbackFailsClearlyAndWithFallbackRunsOnTheCpu()
    {
        BootMaeRuntime.EnsureTorchLoaded();
        if (torch.cuda.is_available())
        {
            Assert.Inconclusive("This machine has CUDA; the test covers the no-GPU cases.");
        }

        using var files = new MlNetTestData();
        using var encoder = BootMaeEncoder.CreateRandom(MlNetTestData.Tiny8, seed: 2);
        var strict = new MLContext(seed: 1) { GpuDeviceId = 0, FallbackToCpu = false };
        var rows = files.ColourRows(strict, 4);
        var pretrain = Pretrain(null, _ => { });
        pretrain.MaxSteps = 1;
        var error = Assert.ThrowsExactly<InvalidOperationException>(() => PretrainPipeline(strict, files, pretrain).Fit(rows));
        StringAssert.Contains(error.Message, "MLContext.GpuDeviceId = 0");
        StringAssert.Contains(error.Message, "CUDA is not available");
        StringAssert.Contains(error.Message, "FallbackToCpu = true");
        var classify = Classify(encoder, null, _ => { });
        classify.MaxSteps = 1;
        error = Assert.ThrowsExactly<InvalidOperationException>(() => ClassifyPipeline(strict, files, classify).Fit(rows));
        StringAssert.Contains(error.Message, "MLContext.GpuDeviceId = 0");

        // Explicit Options win over the MLContext: Device = Cpu, or FallbackToCpu = true.
        var cpu = Pretrain(null, _ => { });
        (cpu.MaxSteps, cpu.Device) = (1, BootMaeDevice.Cpu);
        using (var model = (IDisposable)PretrainPipeline(strict, files, cpu).Fit(rows))
        {
        }

        var lines = new List<string>();
        var fallback = Classify(encoder, null, _ => { }, lines);
        (fallback.MaxSteps, fallback.FallbackToCpu) = (1, true);
        using (var model = (IDisposable)ClassifyPipeline(strict, files, fallback).Fit(rows))
        {
        }

        Assert.IsTrue(lines.Any(l => l.Contains("MLContext.GpuDeviceId = 0", StringComparison.Ordinal) && l.Contains("falling back to the CPU", StringComparison.Ordinal)), string.Join("\n", lines));

        // MLContext.FallbackToCpu = true: a GPU is asked for, the CPU stands in, and says so.
        var lenient = new MLContext(seed: 1) { GpuDeviceId = 0, FallbackToCpu = true };
        lines.Clear();
        var pretrainLines = Pretrain(null, _ => { }, lines);
        pretrainLines.MaxSteps = 1;
        var encoderModel = PretrainPipeline(lenient, files, pretrainLines).Fit(files.ColourRows(lenient, 4));
        try
        {
            Assert.IsTrue(lines.Any(l => l.Contains("MLContext.GpuDeviceId = 0", StringComparison.Ordinal) && l.Contains("falling back to the CPU", StringComparison.Ordinal)), string.Join("\n", lines));
            var encoderTransformer = ((IEnumerable<ITransformer>)encoderModel).Last() as BootMaeEncoderTransformer;
            Assert.IsNotNull(encoderTransformer);
            Assert.AreEqual(DeviceType.CPU, encoderTransformer.Encoder.Device.type);
        }
        finally
        {
            (encoderModel as IDisposable)?.Dispose();
        }
    }
}
