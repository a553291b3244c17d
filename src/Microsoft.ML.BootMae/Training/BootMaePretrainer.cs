using System.Diagnostics;
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
        bool bf16Teacher = s.Precision == BootMaePrecision.BFloat16 && TorchDevices.HasFastBFloat16(device);
        var modelSettings = ToModelSettings(s, bf16Teacher);
        var schedules = CreateSchedules(totalSteps, s, log);
        log?.Invoke(string.Format(CultureInfo.InvariantCulture,
            "BootMAE pretraining ({0}): {1} images, batch {2}, {3} steps ({4} per epoch), peak lr {5:E2}, teacher {6}{7}.",
            s.Mode, count, s.BatchSize, totalSteps, stepsPerEpoch, schedules.BaseLearningRate,
            s.Mode == BootMaeMode.Mae ? "none" : s.Teacher.ToString(), bf16Teacher ? " in bfloat16" : string.Empty));

        torch.manual_seed(s.Seed);
        using var network = BootMaeNetwork.Create(a, modelSettings, s.Seed);
        if (s.InitialEncoder is { } initial)
        {
            EncoderWeights.CopyInto(initial.Module, network.Encoder, "InitialEncoder");
        }

        Hooks?.InitializeNetwork?.Invoke(network);
        network.to(device);
        network.train();
        using var teacher = modelSettings.UsesFeatureLoss ? new MomentumTeacher(network.Encoder, bf16Teacher) : null;
        if (teacher is not null && s.Teacher == BootMaeTeacher.Frozen)
        {
            EncoderWeights.CopyInto(s.TeacherEncoder!.Module, teacher.Encoder, "TeacherEncoder");
            teacher.SyncAfterLoad();
        }

        using var optimizer = ParameterGroups.CreateAdamW(network, schedules.BaseLearningRate, s.WeightDecay);
        string fingerprint = Fingerprint(s, totalSteps);
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

        var run = new Run(this, network, teacher, optimizer, schedules, device, modelSettings, fingerprint, metricsCallback, log);
        return run.Execute(source, position, stepsPerEpoch, cancellationToken);
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
        using var network = new BootMaeNetwork(architecture, new BootMaeModelSettings { Mode = PretrainMode.BootMae, InjectRegressor = true, InjectPredictor = true });
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

    // The momenta never decrease along the run (start ≤ mid ≤ end), so a given Mid or End below the value before it is
    // raised to that value; log says so in one line.
    internal static Schedules CreateSchedules(long totalSteps, BootMaePretrainerSettings s, Action<string>? log = null)
    {
        var scaled = Schedules.ScaledEmaMomenta(totalSteps, s.EmaMomentumFloor);
        double start = s.EmaMomentumStart ?? scaled.Start;
        double mid = Math.Max(start, s.EmaMomentumMid ?? scaled.Mid);
        double end = Math.Max(mid, s.EmaMomentumEnd ?? scaled.End);
        var raised = new List<string>(2);
        if (s.EmaMomentumMid is { } givenMid && mid > givenMid)
        {
            raised.Add(string.Format(CultureInfo.InvariantCulture, "EmaMomentumMid from {0} to {1}", givenMid, mid));
        }

        if (s.EmaMomentumEnd is { } givenEnd && end > givenEnd)
        {
            raised.Add(string.Format(CultureInfo.InvariantCulture, "EmaMomentumEnd from {0} to {1}", givenEnd, end));
        }

        if (raised.Count > 0)
        {
            log?.Invoke($"Raised {string.Join(" and ", raised)}: the EMA momentum never decreases along the run (start <= mid <= end).");
        }

        double peak = s.LearningRate * s.BatchSize / 256.0;
        return new Schedules(totalSteps, peak, peak * s.MinLearningRateFraction, s.WarmupFraction,
            s.FeatureLossWeight, s.FeatureLossRampFraction, start, mid, end, s.EmaRamp1Fraction, s.EmaRamp2EndFraction);
    }

    internal static BootMaeModelSettings ToModelSettings(BootMaePretrainerSettings s, bool bf16Teacher) => new()
    {
        Mode = s.Mode == BootMaeMode.Mae ? PretrainMode.Mae : PretrainMode.BootMae,
        Target = s.Target switch { BootMaeTarget.Pixel => PretrainTarget.Pixel, BootMaeTarget.Feature => PretrainTarget.Feature, _ => PretrainTarget.Both },
        Teacher = s.Teacher == BootMaeTeacher.Frozen ? TeacherKind.Frozen : TeacherKind.Ema,
        Masking = s.Masking switch { BootMaeMasking.Block => MaskingStrategy.Block, BootMaeMasking.Random => MaskingStrategy.Random, _ => MaskingStrategy.BlockFill },
        MaskJitter = s.MaskJitter,
        MaskRatio = s.MaskRatio,
        InjectRegressor = s.InjectRegressor,
        InjectPredictor = s.InjectPredictor,
        WeightMask = s.WeightMask,
        NormPixTarget = s.NormPixTarget,
        TeacherFraction = s.TeacherFraction,
        FeatureWeight = s.FeatureLossWeight,
        TeacherBFloat16 = bf16Teacher,
        MaeDecoderDepth = s.MaeDecoderDepth,
        FeatureTargetNormalization = s.FeatureTargetNormalization,
        PixelTargetEpsilon = s.PixelTargetEpsilon,
    };

    // What must not change between a checkpoint and its resume.
    internal static string Fingerprint(BootMaePretrainerSettings s, long totalSteps) => string.Join('|', new object[]
    {
        s.Mode, s.Target, s.Teacher, s.Masking, s.MaskRatio, s.TeacherFraction, s.BatchSize, s.MaxEpochs, totalSteps, s.Seed,
        s.InjectRegressor, s.InjectPredictor, s.WeightMask, s.NormPixTarget, s.MaeDecoderDepth,
        s.FeatureTargetNormalization, s.PixelTargetEpsilon, s.Augment, s.EmaMomentumFloor,
    }.Select(o => Convert.ToString(o, CultureInfo.InvariantCulture)));

    /// <summary>The state of one run of <see cref="Train"/>.</summary>
    private sealed class Run
    {
        // Above this share of common energy the feature target tells images apart too little to teach anything.
        private const double CollapsedSharedEnergy = 0.9;

        private readonly BootMaePretrainer _owner;
        private readonly BootMaeNetwork _network;
        private readonly MomentumTeacher? _teacher;
        private readonly OwnedAdamW _optimizer;
        private readonly Schedules _schedules;
        private readonly Device _device;
        private readonly BootMaeModelSettings _model;
        private readonly string _fingerprint;
        private readonly Action<BootMaeTrainingMetrics>? _metrics;
        private readonly Action<string>? _log;
        private readonly Stopwatch _clock = Stopwatch.StartNew();
        private long _stepsThisRun;
        private long _imagesSinceReport;
        private TimeSpan _lastReport;

        // This epoch's per-step loss sums stay on the device and are read only when a report, a checkpoint or the end
        // needs them (each host read is a device sync on a GPU). Slots, float64 as the host sums were: 0 total, 1 pixel,
        // 2 feature, 3-6 the diagnostics (pixel unweighted, pixel zero baseline, feature unweighted, shared energy), 7
        // the steps summed, 8 one plus the epoch index of the first step whose total was not finite (0: none), 9 that total.
        private const int LossSlots = 7, CountSlot = 7, FirstBadSlot = 8, StateSlots = 10;
        private Tensor? _state, _sums, _count, _firstBad, _firstBadMarker, _zero;
        private bool _collapseWarned;
        private long _epochSteps;
        private long _epochFirstStep;
        private int _epoch;
        private float[]? _previewPixels;
        private int _previewCount;

        public Run(BootMaePretrainer owner, BootMaeNetwork network, MomentumTeacher? teacher, OwnedAdamW optimizer, Schedules schedules, Device device,
            BootMaeModelSettings model, string fingerprint, Action<BootMaeTrainingMetrics>? metrics, Action<string>? log)
        {
            _owner = owner;
            _network = network;
            _teacher = teacher;
            _optimizer = optimizer;
            _schedules = schedules;
            _device = device;
            _model = model;
            _fingerprint = fingerprint;
            _metrics = metrics;
            _log = log;
        }

        private BootMaePretrainerSettings Settings => _owner._settings;

        public BootMaeEncoder Execute(IImageBatchSource source, TrainingPosition start, long stepsPerEpoch, CancellationToken cancellationToken)
        {
            var s = Settings;
            long step = start.Step;
            var position = start;
            string? lastCheckpoint = null;
            using var state = zeros(StateSlots, dtype: ScalarType.Float64, device: _device);
            using var sums = state.narrow(0, 0, LossSlots);
            using var count = state.narrow(0, CountSlot, 1);
            using var firstBad = state.narrow(0, FirstBadSlot, 2);
            using var firstBadMarker = state.narrow(0, FirstBadSlot, 1);
            using var zero = zeros(Array.Empty<long>(), device: _device);
            (_state, _sums, _count, _firstBad, _firstBadMarker, _zero) = (state, sums, count, firstBad, firstBadMarker, zero);
            try
            {
                for (int epoch = start.Epoch; step < _schedules.TotalSteps; epoch++)
                {
                    long skip = epoch == start.Epoch ? start.StepInEpoch : 0;
                    long inEpoch = 0;
                    ResetEpochAverages(epoch, step);
                    foreach (var batch in source.ReadEpoch(epoch, s.BatchSize, cancellationToken))
                    {
                        if (inEpoch++ < skip)
                        {
                            continue;
                        }

                        cancellationToken.ThrowIfCancellationRequested();
                        KeepPreviewImages(batch);
                        TrainStep(batch, step);
                        step++;
                        // After an epoch's last batch the run stands at the start of the next epoch, as the epoch-end
                        // checkpoint records it (an official export then counts that epoch as finished).
                        position = inEpoch == stepsPerEpoch
                            ? new TrainingPosition(step, epoch + 1, 0, _schedules.TotalSteps, s.Seed)
                            : new TrainingPosition(step, epoch, inEpoch, _schedules.TotalSteps, s.Seed);
                        if (step % s.LogEveryNSteps == 0 && step < _schedules.TotalSteps)
                        {
                            Report(epoch, step, isEpochEnd: false);
                        }

                        if (s.CheckpointDirectory is not null && s.CheckpointEveryNSteps is { } every && step % every == 0)
                        {
                            lastCheckpoint = SaveCheckpoint(position);
                        }

                        if (step >= _schedules.TotalSteps)
                        {
                            break;
                        }
                    }

                    if (inEpoch == 0)
                    {
                        throw new InvalidOperationException($"The image source yielded no batch in epoch {epoch}.");
                    }

                    // A finished epoch resumes at the start of the next one.
                    position = new TrainingPosition(step, epoch + 1, 0, _schedules.TotalSteps, s.Seed);
                    Report(epoch, step, isEpochEnd: true);
                    WritePreview(epoch);
                    if (s.CheckpointDirectory is not null && s.CheckpointEveryNSteps is null)
                    {
                        lastCheckpoint = SaveCheckpoint(position);
                    }
                }
            }
            catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
            {
                _log?.Invoke($"Pretraining cancelled after step {step}.");
                try
                {
                    if (s.CheckpointDirectory is not null && step > start.Step)
                    {
                        SaveCheckpoint(position);
                    }

                    // The model returned on cancellation must come from finite steps too.
                    ThrowIfNotFinite();
                }
                catch (BootMaeTrainingException bad)
                {
                    throw WithCheckpointHint(bad);
                }

                if (!s.ReturnModelOnCancellation)
                {
                    throw;
                }
            }
            catch (BootMaeTrainingException ex)
            {
                throw WithCheckpointHint(ex);
            }

            return ExtractEncoder();

            BootMaeTrainingException WithCheckpointHint(BootMaeTrainingException ex) => new(ex.Message + (lastCheckpoint is not null
                ? $" The last good checkpoint is '{lastCheckpoint}'."
                : s.CheckpointDirectory is not null ? $" No checkpoint of this run was written before it; earlier ones in '{s.CheckpointDirectory}' are untouched." : " Set CheckpointDirectory to keep checkpoints."), ex.InnerException);
        }

        private void TrainStep(ImageBatch batch, long step)
        {
            var a = _network.Architecture;
            using var scope = NewDisposeScope();
            double lr = _schedules.LearningRate(step);
            foreach (var group in _optimizer.ParamGroups)
            {
                group.LearningRate = lr;
            }

            double lambda = _schedules.FeatureLossWeight(step);
            var pixels01 = InputNormalization.Pixels(batch.Pixels, batch.Count, a, _device);
            if (Settings.Augment)
            {
                // Drawn from the seed and step, so a resumed run sees the same views.
                pixels01 = FineTuneAugmentation.RandomResizedCropFlip(pixels01, new Random(Seeds.Derive(Settings.Seed, step, stream: 4)),
                    DataViews.ImageAugmentation.For(a).MinScale);
            }

            var images = InputNormalization.Apply(pixels01, a.Normalization);
            var hooks = _owner.Hooks;
            using var masks = hooks?.Masks is { } injected
                ? injected(step, batch.Count, _device)
                : MaskingGenerator.ForSettings(a, _model, Seeds.Derive(Settings.Seed, step, stream: 1)).Next(batch.Count, _device);
            Tensor? target = null;
            Tensor? ids = null;
            if (_teacher is not null)
            {
                (target, ids) = _teacher.Targets(images, masks, _model.TeacherFraction, new Random(Seeds.Derive(Settings.Seed, step, stream: 2)));
            }

            var forward = _network.Forward(images, masks);
            var loss = BootMaeLosses.Compute(_network, forward, images, masks, target, ids, lambda, diagnostics: true);
            Accumulate(loss);
            _optimizer.ZeroGrad();
            loss.Total.backward();
            _optimizer.Step();
            double? momentum = null;
            if (_teacher is not null && Settings.Teacher == BootMaeTeacher.Ema)
            {
                momentum = _schedules.EmaMomentum(step);
                _teacher.Update(_network.Encoder, momentum.Value);
            }

            _stepsThisRun++;
            _imagesSinceReport += batch.Count;
            _epochSteps++;
            if (hooks?.AfterStep is { } afterStep)
            {
                // Test seam only: the host reads here are what the product path avoids.
                afterStep(new PretrainingStepTrace(step, _optimizer.ParamGroups.First().LearningRate, lambda, momentum,
                    loss.Total.item<float>(), loss.Pixel?.item<float>(), loss.Feature?.item<float>(), _network, _teacher, masks.NumMasked));
            }
        }

        // Adds this step's losses to the device sums and marks the first non-finite total, without a host read.
        private void Accumulate(LossResult loss)
        {
            using var guard = no_grad();
            var d = loss.Diagnostics;
            var parts = stack(new[]
            {
                loss.Total, loss.Pixel ?? _zero!, loss.Feature ?? _zero!, d?.PixelUnweighted ?? _zero!, d?.PixelZeroBaseline ?? _zero!,
                d?.FeatureUnweighted ?? _zero!, d?.FeatureTargetSharedEnergy ?? _zero!,
            }.Select(t => t.detach())).to(ScalarType.Float64);
            _sums!.add_(parts, TorchScalars.OneDouble);
            var total = parts.narrow(0, 0, 1);
            var isFirstBad = _firstBadMarker!.eq(_zero!).logical_and(total.isfinite().logical_not());
            _firstBad!.copy_(where(isFirstBad, cat(new[] { _count!.add(TorchScalars.OneDouble, TorchScalars.OneDouble), total }, 0), _firstBad));
            _count.add_(TorchScalars.OneDouble, TorchScalars.OneDouble);
        }

        // One host read of the epoch's device sums (a sync on a GPU); throws when a step's loss was not finite.
        private double[] ReadSums()
        {
            double[] host;
            using (NewDisposeScope())
            {
                host = _state!.cpu().data<double>().ToArray();
            }

            if (host[FirstBadSlot] > 0)
            {
                long bad = _epochFirstStep + (long)host[FirstBadSlot] - 1;
                throw new BootMaeTrainingException(string.Format(CultureInfo.InvariantCulture,
                    "The pretraining loss became {0} at step {1} (epoch {2}, learning rate {3:E2}). Lower LearningRate or check the input images.",
                    (float)host[FirstBadSlot + 1], bad, _epoch, _schedules.LearningRate(bad)));
            }

            return host;
        }

        private void ThrowIfNotFinite() => _ = ReadSums();

        private void KeepPreviewImages(ImageBatch batch)
        {
            if (_previewPixels is not null || Settings.ReconstructionPreviewPath is null)
            {
                return;
            }

            var a = _network.Architecture;
            _previewCount = Math.Min(batch.Count, Settings.ReconstructionPreviewCount);
            _previewPixels = batch.Pixels.AsSpan(0, _previewCount * a.Channels * a.ImageSize * a.ImageSize).ToArray();
        }

        private void WritePreview(int epoch)
        {
            if (_previewPixels is null || Settings.ReconstructionPreviewPath is not { } path)
            {
                return;
            }

            // Fixed masks (one seed for the run) so successive epochs are comparable.
            var written = ReconstructionPreview.Write(_network, _previewPixels, _previewCount, _device, Seeds.Derive(Settings.Seed, 0, stream: 3), path,
                $"{(Settings.Mode == BootMaeMode.Mae ? "MAE" : "BootMAE")} reconstructions after epoch {epoch + 1}");
            _log?.Invoke($"Reconstruction preview: '{written}'.");
        }

        private void ResetEpochAverages(int epoch, long firstStep)
        {
            _epochSteps = 0;
            _epochFirstStep = firstStep;
            _epoch = epoch;
            OwnedTensors.Zero(_state!);
        }

        private void Report(int epoch, long step, bool isEpochEnd)
        {
            if (_epochSteps == 0)
            {
                return;
            }

            var sums = ReadSums();
            var elapsed = _clock.Elapsed;
            double seconds = (elapsed - _lastReport).TotalSeconds;
            long remaining = _schedules.TotalSteps - step;
            var metrics = new BootMaeTrainingMetrics
            {
                Dataset = BootMaeDataset.Train,
                Epoch = epoch,
                Step = step,
                TotalSteps = _schedules.TotalSteps,
                IsEpochEnd = isEpochEnd,
                Loss = (float)(sums[0] / _epochSteps),
                PixelLoss = _model.UsesPixelLoss ? (float)(sums[1] / _epochSteps) : null,
                FeatureLoss = _model.UsesFeatureLoss ? (float)(sums[2] / _epochSteps) : null,
                PixelLossUnweighted = _model.UsesPixelLoss ? (float)(sums[3] / _epochSteps) : null,
                PixelLossZeroBaseline = _model.UsesPixelLoss ? (float)(sums[4] / _epochSteps) : null,
                FeatureLossUnweighted = _model.UsesFeatureLoss ? (float)(sums[5] / _epochSteps) : null,
                FeatureTargetSharedEnergy = _model.UsesFeatureLoss ? (float)(sums[6] / _epochSteps) : null,
                LearningRate = _schedules.LearningRate(step - 1),
                EmaMomentum = _teacher is null ? null : _schedules.EmaMomentum(step - 1),
                FeatureWeight = _model.UsesFeatureLoss ? _schedules.FeatureLossWeight(step - 1) : null,
                ImagesPerSecond = seconds > 0 ? _imagesSinceReport / seconds : 0,
                Elapsed = elapsed,
                Eta = _stepsThisRun > 0 ? TimeSpan.FromSeconds(elapsed.TotalSeconds / _stepsThisRun * remaining) : null,
            };
            _lastReport = elapsed;
            _imagesSinceReport = 0;
            _metrics?.Invoke(metrics);
            _log?.Invoke(metrics.ToString());
            WarnIfTrivial(metrics);
        }

        // Once per run: say so when the objective has become trivial, since the loss curve alone looks healthy then.
        private void WarnIfTrivial(BootMaeTrainingMetrics m)
        {
            if (_collapseWarned || !m.IsEpochEnd)
            {
                return;
            }

            if (m.FeatureTargetSharedEnergy is { } shared && shared > CollapsedSharedEnergy)
            {
                _collapseWarned = true;
                _log?.Invoke(string.Format(CultureInfo.InvariantCulture,
                    "Warning: the feature target has collapsed: {0:P1} of its energy is common to all images, so the feature predictor can only learn " +
                    "positional means. Use FeatureTargetNormalization = BatchStandardized, a higher EmaMomentumFloor, or Target = Pixel.", shared));
            }
            else if (m.PixelLoss is { } pixel && m.PixelLossZeroBaseline is { } zero && zero > 0 && m.Epoch > 0 && pixel > 0.95 * zero)
            {
                _collapseWarned = true;
                _log?.Invoke(string.Format(CultureInfo.InvariantCulture,
                    "Warning: the pixel loss {0:F4} is within 5% of what predicting 0 scores ({1:F4}): the pixel regressor is barely learning. " +
                    "Try a higher LearningRate, more epochs, or a larger PixelTargetEpsilon for flat images.", pixel, zero));
            }
        }

        private string SaveCheckpoint(TrainingPosition position)
        {
            // Never save the weights a non-finite step produced; the last good checkpoint stays.
            ThrowIfNotFinite();
            var path = PretrainingCheckpoint.Save(Settings.CheckpointDirectory!, position, _network.Architecture, _fingerprint,
                _network, _teacher, _optimizer, Settings.CheckpointsToKeep);
            _log?.Invoke($"Checkpoint written: '{path}' (step {position.Step}).");
            return path;
        }

        private BootMaeEncoder ExtractEncoder()
        {
            var module = EncoderWeights.Copy(_network.Encoder, _network.Architecture, "the trained student");
            return new BootMaeEncoder(module.to(_device), _network.Architecture);
        }
    }
}

/// <summary>Thrown when training cannot go on (for example the loss became NaN); the message says where the last good checkpoint is.</summary>
public sealed class BootMaeTrainingException : Exception
{
    /// <summary>Creates the exception.</summary>
    /// <param name="message">What happened and what to do.</param>
    /// <param name="innerException">The cause, if any.</param>
    public BootMaeTrainingException(string message, Exception? innerException = null)
        : base(message, innerException)
    {
    }
}
