using System.Globalization;
using Microsoft.ML.BootMae.Interop;
using Microsoft.ML.BootMae.Modules;
using Microsoft.ML.BootMae.Training;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae;

/// <summary>
/// Runs BootMAE (or MAE) pretraining: the training loop of the engine. The ML.NET estimator
/// <c>mlContext.Transforms.BootMaePretrain</c> wraps it; apps and benchmarks can also call it directly with any
/// <see cref="IImageBatchSource"/>.
/// </summary>
/// <remarks>
/// One step: normalise the batch to [-1, 1], draw per-sample masks, run the teacher on the full image (or on a subset,
/// see <see cref="BootMaePretrainerSettings.TeacherFraction"/>), run the student (encoder on visible tokens, pixel
/// regressor with shallow injection, feature predictor with deep injection), take L = L_R + λ·L_P, an AdamW step,
/// then the EMA update of the teacher. Each step runs in its own dispose scope. The losses are summed on the device and
/// read at report and checkpoint steps only (each read is a device sync on a GPU); a loss that is not finite stops the
/// run there with <see cref="BootMaeTrainingException"/>, naming its step, and leaves the last checkpoint as it was.
/// </remarks>
public sealed class BootMaePretrainer
{
    private readonly BootMaeArchitecture _architecture;
    private readonly BootMaePretrainerSettings _settings;

    /// <summary>Creates a trainer; nothing runs until <see cref="Train"/>.</summary>
    /// <param name="architecture">The network's shape.</param>
    /// <param name="settings">The run's settings (validated here).</param>
    public BootMaePretrainer(BootMaeArchitecture architecture, BootMaePretrainerSettings settings)
    {
        ArgumentNullException.ThrowIfNull(architecture);
        ArgumentNullException.ThrowIfNull(settings);
        architecture.Validate();
        settings.Validate();
        // Only the encoder's shape must match: the decoders are built for this run whatever the encoder was pretrained with.
        if (settings.InitialEncoder is { } initial)
        {
            BootMaeEncoderShape.RequireFits(initial.Architecture, architecture, "InitialEncoder", "the run's encoder", nameof(settings));
        }

        if (settings.TeacherEncoder is { } frozen)
        {
            BootMaeEncoderShape.RequireFits(frozen.Architecture, architecture, "TeacherEncoder", "the run's encoder", nameof(settings));
        }

        _architecture = architecture;
        _settings = settings;
    }

    // Test seam (trajectory parity); null in every product path.
    internal PretrainingHooks? Hooks { get; init; }

    /// <summary>
    /// Pretrains on <paramref name="source"/> and returns the student's encoder.
    /// </summary>
    /// <param name="source">The images; its <see cref="IImageBatchSource.Count"/> must be known (it sets the schedules).</param>
    /// <param name="metricsCallback">Receives progress every <see cref="BootMaePretrainerSettings.LogEveryNSteps"/> steps and at each epoch end.</param>
    /// <param name="log">Receives human-readable lines (device, resume, checkpoints, progress).</param>
    /// <param name="cancellationToken">Checked between steps.</param>
    /// <exception cref="OperationCanceledException">Cancelled, unless <see cref="BootMaePretrainerSettings.ReturnModelOnCancellation"/> is set.</exception>
    /// <exception cref="BootMaeTrainingException">The loss became NaN or infinite.</exception>
    public BootMaeEncoder Train(IImageBatchSource source, Action<BootMaeTrainingMetrics>? metricsCallback = null, Action<string>? log = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(source);
        BootMaeRuntime.EnsureTorchLoaded();
        var s = _settings;
        var a = _architecture;
        long count = source.Count ?? throw new ArgumentException("The image source must know how many images it has (Count).", nameof(source));
        if (count == 0)
        {
            throw new ArgumentException("The image source is empty: pretraining needs at least one image.", nameof(source));
        }

        TorchDevices.SetThreads(s.NumberOfThreads, log);
        var device = TorchDevices.Resolve(s.Device, s.GpuDeviceId, s.FallbackToCpu, log);
        long stepsPerEpoch = (count + s.BatchSize - 1) / s.BatchSize;
        long totalSteps = Math.Min(stepsPerEpoch * s.MaxEpochs, s.MaxSteps ?? long.MaxValue);
        bool bf16Teacher = s.Precision != BootMaePrecision.Float32 && TorchDevices.HasFastBFloat16(device);
        var schedules = Schedules.ForPretraining(totalSteps, s, log);
        log?.Invoke(string.Format(CultureInfo.InvariantCulture,
            "BootMAE pretraining ({0}): {1} images, batch {2}, {3} steps ({4} per epoch), peak lr {5:E2}, teacher {6}{7}.",
            s.Mode, count, s.BatchSize, totalSteps, stepsPerEpoch, schedules.BaseLearningRate,
            s.Mode == BootMaeMode.Mae ? "none" : s.Teacher.ToString(), bf16Teacher ? " in bfloat16" : string.Empty));

        torch.manual_seed(s.Seed);
        using var network = BootMaeNetwork.Create(a, s, s.Seed);
        if (s.InitialEncoder is { } initial)
        {
            EncoderWeights.CopyInto(initial.Module, network.Encoder, "InitialEncoder");
        }

        Hooks?.InitializeNetwork?.Invoke(network);
        network.to(device);
        using var mixed = MixedPrecision.Configure(network, s.Precision, device, log);
        network.train();
        using var teacher = s.UsesFeatureLoss ? new MomentumTeacher(network.Encoder, bf16Teacher) : null;
        if (teacher is not null && s.Teacher == BootMaeTeacher.Frozen)
        {
            EncoderWeights.CopyInto(s.TeacherEncoder!.Module, teacher.Encoder, "TeacherEncoder");
            teacher.SyncAfterLoad();
        }

        using var optimizer = ParameterGroups.CreateAdamW(network, schedules.BaseLearningRate, s.WeightDecay);
        string fingerprint = s.Fingerprint(totalSteps);
        var position = new TrainingPosition(0, 0, 0, totalSteps, s.Seed);
        if (s.InitialState is { } initialState)
        {
            position = OfficialCheckpoint.Load(initialState, network, teacher, loadTeacher: s.Teacher == BootMaeTeacher.Ema, optimizer,
                stepsPerEpoch, totalSteps, s.Seed, log);
        }

        if (s.ResumeFromCheckpoint && PretrainingCheckpoint.FindLatestValid(s.CheckpointDirectory!, a, fingerprint, log) is { } found)
        {
            PretrainingCheckpoint.Load(found.Path, network, teacher, optimizer);
            position = found.Position;
            log?.Invoke($"Resumed from '{found.Path}' at step {position.Step} (epoch {position.Epoch}).");
        }

        using var run = new PretrainingRun(s, Hooks, network, teacher, optimizer, schedules, device, fingerprint, stepsPerEpoch, metricsCallback, log);
        return run.Execute(source, position, cancellationToken);
    }

    /// <summary>
    /// Writes a pretraining checkpoint as the official BootMAE code keeps its own (LightDXY/BootMAE <c>run_pretraining.py</c>,
    /// <c>--resume</c>): <paramref name="destination"/> (<c>.pth</c>) with <c>model</c> (the whole student under the official
    /// <c>VisionTransformerForMaskedImageModeling</c> names), <c>model_ema</c>, <c>optimizer</c> (AdamW moments and step
    /// counts in the official parameter groups), <c>epoch</c> and <c>args</c>, and beside it a <c>.safetensors</c> twin with the
    /// same tensors under <c>model.</c> / <c>model_ema.</c> / <c>optimizer.</c> names. See docs/scale-out.md.
    /// </summary>
    /// <param name="checkpoint">A checkpoint folder (<c>step-…</c>, with <c>manifest.json</c>) or a
    /// <see cref="BootMaePretrainerSettings.CheckpointDirectory"/>, whose newest valid checkpoint is taken.</param>
    /// <param name="destination">The <c>.pth</c> file to write (replaced atomically; its folder must exist).</param>
    /// <param name="log">Receives what was written and how the official code resumes from it.</param>
    /// <returns>The <c>.pth</c> and <c>.safetensors</c> paths.</returns>
    /// <exception cref="InvalidDataException">No usable checkpoint at <paramref name="checkpoint"/>.</exception>
    /// <exception cref="InvalidOperationException">The run cannot be expressed in the official layout (MAE mode, an injection
    /// off, decoder heads that differ from the encoder's, or WeightDecay 0); the message says which.</exception>
    public static (string Pth, string Safetensors) ExportOfficialCheckpoint(string checkpoint, string destination, Action<string>? log = null)
    {
        ArgumentNullException.ThrowIfNull(checkpoint);
        ArgumentNullException.ThrowIfNull(destination);
        BootMaeRuntime.EnsureTorchLoaded();
        var (folder, architecture, position) = CheckpointFolder.Resolve(checkpoint, PretrainingCheckpoint.Format, PretrainingCheckpoint.Version);
        // The official layout is BootMAE mode with both injections; a checkpoint of another layout fails to load into it.
        using var network = new BootMaeNetwork(architecture, new BootMaePretrainerSettings());
        try
        {
            CheckpointFolder.ReadWith(folder, "student.bin", r => network.load(r));
        }
        catch (ArgumentException ex)
        {
            throw new InvalidOperationException($"Checkpoint '{folder}': its student is not the official BootMAE layout (a run in MAE mode, or with " +
                $"InjectRegressor or InjectPredictor off): {ex.Message}", ex);
        }

        OfficialCheckpoint.CheckLayout(network);
        using var teacher = new VisionTransformerEncoder(architecture);
        bool hasTeacher = false;
        CheckpointFolder.ReadWith(folder, "teacher.bin", r =>
        {
            // A run without a teacher (Target = Pixel) writes an empty teacher.bin.
            hasTeacher = r.BaseStream.Length > 0;
            if (hasTeacher)
            {
                teacher.load(r);
            }
        });
        IReadOnlyList<double> decays = Array.Empty<double>();
        CheckpointFolder.ReadWith(folder, "optimizer.bin", r => decays = OwnedAdamW.ReadWeightDecays(r));
        using var optimizer = ParameterGroups.CreateAdamW(network, 1e-3, decays.Count > 0 ? decays[0] : 0);
        CheckpointFolder.ReadWith(folder, "optimizer.bin", r => optimizer.Load(r));
        log?.Invoke($"Exporting checkpoint '{folder}' (step {position.Step}, epoch {position.Epoch}).");
        return OfficialCheckpoint.Export(destination, network, hasTeacher ? teacher : null, optimizer, position, log);
    }
}
