using System.Diagnostics;
using System.Text.Json;
using Microsoft.ML.BootMae.Training;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Benchmarks;

/// <summary>
/// The CUDA path against the CPU path, for a machine with an NVIDIA GPU (CI has none, so this is a command, not a test).
/// Masks, augmentation and initialisation come from .NET-side seeds, so the same settings give the same run on either
/// device up to floating-point rounding: cuBLAS/cuDNN sum in other orders, and cuDNN convolutions may use TF32.
/// </summary>
internal static class GpuCheck
{
    // Loss after a few steps: GPU and CPU fp32 runs agree to this relative difference (rounding, TF32 in the conv).
    private const double LossTolerance = 2e-3;

    // bf16 teacher against fp32 teacher on the GPU (bf16 keeps 8 bits of mantissa).
    private const double BFloat16LossTolerance = 2e-2;

    public static int Run(Arguments args)
    {
        // --device cpu runs every comparison CPU against CPU: a self-test of this command on a machine without a GPU.
        var device = args.DeviceOption ?? BootMaeDevice.Cuda;
        bool available = TorchSharp.torch.cuda.is_available();
        Report(new { check = "cuda_available", available, devices = available ? TorchSharp.torch.cuda.device_count() : 0, compared_device = device.ToString() });
        if (!available && device == BootMaeDevice.Cuda)
        {
            Console.WriteLine("gpucheck: CUDA is not available (no GPU, or no CUDA build of libtorch on the library path).");
            return 1;
        }

        // The samples' small28 shape: fast on both devices, yet every component (both decoders, teacher) runs.
        var architecture = BootMaeArchitecture.Small28;
        const int steps = 6;
        bool ok = true;

        var cpu = Losses(architecture, BootMaeDevice.Cpu, BootMaePrecision.Float32, steps, null, resume: false, out var cpuWeights);
        // The straight device run's encoder is kept for the embedding check at the end.
        using var deviceEncoder = Train(architecture, device, BootMaePrecision.Float32, steps, null, resume: false, out var gpu, out var gpuWeights);
        double lossDiff = MaxRelative(cpu, gpu);
        double weightDiff = MaxAbsolute(cpuWeights, gpuWeights, out string worstKey);
        ok &= Check("fp32_device_vs_cpu", lossDiff <= LossTolerance, new { cpu_losses = cpu, device_losses = gpu, max_rel_loss_diff = lossDiff, tolerance = LossTolerance, max_abs_weight_diff = weightDiff, worst_weight = worstKey });

        var bf16 = Losses(architecture, device, BootMaePrecision.BFloat16, steps, null, resume: false, out _);
        double bf16Diff = MaxRelative(gpu, bf16);
        ok &= Check("bf16_teacher_vs_fp32_on_device", bf16Diff <= BFloat16LossTolerance && bf16.All(float.IsFinite), new { bf16_losses = bf16, max_rel_loss_diff = bf16Diff, tolerance = BFloat16LossTolerance });
        // The mixed student (bf16 matrix products, fp32 masters) on top of the bf16 teacher; fp32 where bf16 is not fast.
        var mixed = Losses(architecture, device, BootMaePrecision.BFloat16Mixed, steps, null, resume: false, out _);
        double mixedDiff = MaxRelative(gpu, mixed);
        ok &= Check("mixed_student_vs_fp32_on_device", mixedDiff <= BFloat16LossTolerance && mixed.All(float.IsFinite), new { mixed_losses = mixed, max_rel_loss_diff = mixedDiff, tolerance = BFloat16LossTolerance });

        // A run cancelled on the GPU after half its steps resumes on the CPU from the checkpoint that cancelling wrote,
        // and ends where the GPU run that went straight through ended.
        string folder = Path.Combine(Path.GetTempPath(), "bootmae-gpucheck-" + Environment.ProcessId);
        try
        {
            var first = new SortedDictionary<long, float>();
            using var cancel = new CancellationTokenSource();
            try
            {
                new BootMaePretrainer(architecture, Settings(device, BootMaePrecision.Float32, steps, folder, resume: false)).Train(global::Data.Source(architecture, 256), m =>
                {
                    first[m.Step] = m.Loss;
                    if (m.Step == steps / 2)
                    {
                        cancel.Cancel();
                    }
                }, cancellationToken: cancel.Token).Dispose();
            }
            catch (OperationCanceledException)
            {
                // Expected: cancelling writes a checkpoint and throws.
            }

            var rest = Losses(architecture, BootMaeDevice.Cpu, BootMaePrecision.Float32, steps, folder, resume: true, out var resumedWeights);
            // Reported losses are averages since the epoch began, and a resumed run starts a new average, so the check
            // is on the weights: as close to the straight device run as the CPU run was (within 2×, or 1e-5 on CPU).
            double resumeWeightDiff = MaxAbsolute(gpuWeights, resumedWeights, out _);
            double weightTolerance = Math.Max(1e-5, 2 * weightDiff);
            ok &= Check("checkpoint_written_on_device_resumes_on_cpu", first.Count == steps / 2 && rest.Length == steps - (steps / 2) && resumeWeightDiff <= weightTolerance,
                new { steps_on_device = first.Count, steps_on_cpu = rest.Length, max_abs_weight_diff_vs_straight = resumeWeightDiff, tolerance = weightTolerance });
        }
        finally
        {
            if (Directory.Exists(folder))
            {
                Directory.Delete(folder, recursive: true);
            }
        }

        // The encoder trained on the GPU embeds the same way on both devices.
        var random = new Random(11);
        var pixels = Enumerable.Range(0, 16 * 28 * 28).Select(_ => (float)random.NextDouble()).ToArray();
        var onDevice = deviceEncoder.Embed(pixels, 16, BootMaePooling.Mean, architecture.Depth - 1, BootMaePrecision.Float32);
        var onCpu = EmbedOnCpu(deviceEncoder, pixels, architecture);
        double embedDiff = onDevice.Zip(onCpu).Max(p => Math.Abs(p.First - p.Second)) / onCpu.Max(Math.Abs);
        ok &= Check("encoder_embed_device_vs_cpu", embedDiff <= LossTolerance, new { encoder_device = deviceEncoder.Device.ToString(), max_rel_embedding_diff = embedDiff });

        Console.WriteLine(ok ? "gpucheck: all checks passed" : "gpucheck: FAILED");
        return ok ? 0 : 1;
    }

    private static BootMaePretrainerSettings Settings(BootMaeDevice device, BootMaePrecision precision, int steps, string? folder, bool resume) => new()
    {
        Mode = BootMaeMode.BootMae, BatchSize = 32, MaxEpochs = 1_000, MaxSteps = steps, Device = device, FallbackToCpu = false,
        Precision = precision, LogEveryNSteps = 1, Seed = 5, CheckpointDirectory = folder, CheckpointEveryNSteps = folder is null ? null : 1,
        ResumeFromCheckpoint = resume,
    };

    private static float[] Losses(BootMaeArchitecture architecture, BootMaeDevice device, BootMaePrecision precision, int steps, string? folder, bool resume,
        out Dictionary<string, float[]> weights)
    {
        using var encoder = Train(architecture, device, precision, steps, folder, resume, out var losses, out weights);
        return losses;
    }

    // One run: the trained encoder (the caller disposes it), its per-step reported losses and its weights on the host.
    private static BootMaeEncoder Train(BootMaeArchitecture architecture, BootMaeDevice device, BootMaePrecision precision, int steps, string? folder, bool resume,
        out float[] losses, out Dictionary<string, float[]> weights)
    {
        var byStep = new SortedDictionary<long, float>();
        var watch = Stopwatch.StartNew();
        var encoder = new BootMaePretrainer(architecture, Settings(device, precision, steps, folder, resume))
            .Train(global::Data.Source(architecture, 256), m => byStep[m.Step] = m.Loss);
        losses = byStep.Values.ToArray();
        weights = encoder.Module.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.detach().cpu().data<float>().ToArray());
        Report(new { run = $"{device} {precision} {steps} steps{(resume ? " (resumed)" : string.Empty)}", seconds = Math.Round(watch.Elapsed.TotalSeconds, 2), encoder_device = encoder.Device.ToString() });
        return encoder;
    }

    private static float[] EmbedOnCpu(BootMaeEncoder encoder, float[] pixels, BootMaeArchitecture architecture)
    {
        string path = Path.Combine(Path.GetTempPath(), $"bootmae-gpucheck-{Environment.ProcessId}.bootmae");
        try
        {
            encoder.Save(path);
            using var loaded = BootMaeEncoder.Load(path);
            return loaded.Embed(pixels, 16, BootMaePooling.Mean, architecture.Depth - 1, BootMaePrecision.Float32);
        }
        finally
        {
            File.Delete(path);
        }
    }

    private static double MaxRelative(float[] a, float[] b) =>
        a.Length != b.Length ? double.MaxValue : a.Zip(b).Max(p => Math.Abs(p.First - p.Second) / Math.Max(1e-6, Math.Abs(p.First)));

    private static double MaxAbsolute(Dictionary<string, float[]> a, Dictionary<string, float[]> b, out string worst)
    {
        worst = string.Empty;
        double max = 0;
        foreach (var (key, values) in a)
        {
            double d = values.Zip(b[key]).Max(p => Math.Abs(p.First - p.Second));
            if (d > max)
            {
                (max, worst) = (d, key);
            }
        }

        return max;
    }

    private static bool Check(string name, bool passed, object details)
    {
        Report(new { check = name, passed, details });
        return passed;
    }

    private static void Report(object value) => Console.WriteLine(JsonSerializer.Serialize(value));
}
