using System.Globalization;
using Microsoft.ML.BootMae.Modules;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Training;

/// <summary>
/// One run of <see cref="BootMaePretrainer.Train"/> as <see cref="TrainingLoop"/> drives it: the BootMAE step, the
/// loss sums kept on the device, the reconstruction preview, the collapse warning and the checkpoint payload.
/// </summary>
internal sealed class PretrainingRun : ITrainingRun, IDisposable
{
    // Above this share of common energy the feature target tells images apart too little to teach anything.
    private const double CollapsedSharedEnergy = 0.9;

    // This epoch's per-step loss sums stay on the device and are read only when a report, a checkpoint or the end
    // needs them (each host read is a device sync on a GPU). Slots, float64 as the host sums were: 0 total, 1 pixel,
    // 2 feature, 3-6 the diagnostics (pixel unweighted, pixel zero baseline, feature unweighted, shared energy), 7
    // the steps summed, 8 one plus the epoch index of the first step whose total was not finite (0: none), 9 that total.
    private const int LossSlots = 7, CountSlot = 7, FirstBadSlot = 8, StateSlots = 10;

    private readonly BootMaePretrainerSettings _settings;
    private readonly PretrainingHooks? _hooks;
    private readonly BootMaeNetwork _network;
    private readonly MomentumTeacher? _teacher;
    private readonly OwnedAdamW _optimizer;
    private readonly Schedules _schedules;
    private readonly Device _device;
    private readonly string _fingerprint;
    private readonly Action<string>? _log;
    private readonly TrainingLoop _loop;
    private readonly Tensor _state, _sums, _count, _firstBad, _firstBadMarker, _zero;
    private bool _collapseWarned;
    private long _epochSteps;
    private long _epochFirstStep;
    private int _epoch;
    private float[]? _previewPixels;
    private int _previewCount;

    public PretrainingRun(BootMaePretrainerSettings settings, PretrainingHooks? hooks, BootMaeNetwork network, MomentumTeacher? teacher, OwnedAdamW optimizer,
        Schedules schedules, Device device, string fingerprint, long stepsPerEpoch, Action<BootMaeTrainingMetrics>? metrics, Action<string>? log)
    {
        _settings = settings;
        _hooks = hooks;
        _network = network;
        _teacher = teacher;
        _optimizer = optimizer;
        _schedules = schedules;
        _device = device;
        _fingerprint = fingerprint;
        _log = log;
        _state = zeros(StateSlots, dtype: ScalarType.Float64, device: device);
        _sums = _state.narrow(0, 0, LossSlots);
        _count = _state.narrow(0, CountSlot, 1);
        _firstBad = _state.narrow(0, FirstBadSlot, 2);
        _firstBadMarker = _state.narrow(0, FirstBadSlot, 1);
        _zero = zeros(Array.Empty<long>(), device: device);
        // The step count alone ends pretraining (a source may yield fewer batches than its Count promises).
        _loop = new TrainingLoop(new TrainingLoopSettings(settings.BatchSize, stepsPerEpoch, schedules.TotalSteps, settings.Seed, MaxEpochs: null,
            settings.LogEveryNSteps, ReportAtFinalStep: false, LastBatchClosesEpoch: true, settings.CheckpointDirectory, settings.CheckpointEveryNSteps), this, metrics, log);
    }

    /// <inheritdoc />
    public string? StopReason => null;

    public BootMaeEncoder Execute(IImageBatchSource source, TrainingPosition start, CancellationToken cancellationToken)
    {
        _loop.Run(source, start, cancellationToken);
        return ExtractEncoder();
    }

    /// <inheritdoc />
    public void BeginEpoch(int epoch, long skipped)
    {
        _epochSteps = 0;
        _epochFirstStep = _loop.Step;
        _epoch = epoch;
        OwnedTensors.Zero(_state);
    }

    /// <inheritdoc />
    public bool Step(ImageBatch batch, long step)
    {
        KeepPreviewImages(batch);
        var a = _network.Architecture;
        using var scope = NewDisposeScope();
        double lr = _schedules.LearningRate(step);
        foreach (var group in _optimizer.ParamGroups)
        {
            group.LearningRate = lr;
        }

        double lambda = _schedules.FeatureLossWeight(step);
        var pixels01 = InputNormalization.Pixels(batch.Pixels, batch.Count, a, _device);
        if (_settings.Augment)
        {
            // Drawn from the seed and step, so a resumed run sees the same views.
            pixels01 = FineTuneAugmentation.RandomResizedCropFlip(pixels01, new Random(Seeds.Derive(_settings.Seed, step, stream: 4)),
                DataViews.ImageAugmentation.For(a).MinScale);
        }

        var images = InputNormalization.Apply(pixels01, a.Normalization);
        using var masks = _hooks?.Masks is { } injected
            ? injected(step, batch.Count, _device)
            : MaskingGenerator.ForSettings(a, _settings, Seeds.Derive(_settings.Seed, step, stream: 1)).Next(batch.Count, _device);
        Tensor? target = null;
        Tensor? ids = null;
        if (_teacher is not null)
        {
            (target, ids) = _teacher.Targets(images, masks, _settings.TeacherFraction, new Random(Seeds.Derive(_settings.Seed, step, stream: 2)));
        }

        var forward = _network.Forward(images, masks);
        var loss = BootMaeLosses.Compute(_network, forward, images, masks, target, ids, lambda, diagnostics: true);
        Accumulate(loss);
        _optimizer.ZeroGrad();
        loss.Total.backward();
        _optimizer.Step();
        double? momentum = null;
        if (_teacher is not null && _settings.Teacher == BootMaeTeacher.Ema)
        {
            momentum = _schedules.EmaMomentum(step);
            _teacher.Update(_network.Encoder, momentum.Value);
        }

        _epochSteps++;
        if (_hooks?.AfterStep is { } afterStep)
        {
            // Test seam only: the host reads here are what the product path avoids.
            afterStep(new PretrainingStepTrace(step, _optimizer.ParamGroups.First().LearningRate, lambda, momentum,
                loss.Total.item<float>(), loss.Pixel?.item<float>(), loss.Feature?.item<float>(), _network, _teacher, masks.NumMasked));
        }

        return true;
    }

    /// <inheritdoc />
    public void ThrowIfNotFinite() => _ = ReadSums();

    /// <inheritdoc />
    public BootMaeTrainingMetrics? TrainingReport(bool isEpochEnd)
    {
        if (_epochSteps == 0)
        {
            return null;
        }

        var sums = ReadSums();
        long step = _loop.Step;
        return new BootMaeTrainingMetrics
        {
            Loss = (float)(sums[0] / _epochSteps),
            PixelLoss = _settings.UsesPixelLoss ? (float)(sums[1] / _epochSteps) : null,
            FeatureLoss = _settings.UsesFeatureLoss ? (float)(sums[2] / _epochSteps) : null,
            PixelLossUnweighted = _settings.UsesPixelLoss ? (float)(sums[3] / _epochSteps) : null,
            PixelLossZeroBaseline = _settings.UsesPixelLoss ? (float)(sums[4] / _epochSteps) : null,
            FeatureLossUnweighted = _settings.UsesFeatureLoss ? (float)(sums[5] / _epochSteps) : null,
            FeatureTargetSharedEnergy = _settings.UsesFeatureLoss ? (float)(sums[6] / _epochSteps) : null,
            LearningRate = _schedules.LearningRate(step - 1),
            EmaMomentum = _teacher is null ? null : _schedules.EmaMomentum(step - 1),
            FeatureWeight = _settings.UsesFeatureLoss ? _schedules.FeatureLossWeight(step - 1) : null,
        };
    }

    /// <inheritdoc />
    public void CheckEpochNotEmpty(int epoch, long batchesRead)
    {
        if (batchesRead == 0)
        {
            throw new InvalidOperationException($"The image source yielded no batch in epoch {epoch}.");
        }
    }

    /// <inheritdoc />
    public void EndEpoch(int epoch, BootMaeTrainingMetrics? report)
    {
        if (report is not null)
        {
            WarnIfTrivial(report);
        }

        WritePreview(epoch);
    }

    /// <inheritdoc />
    public string SaveCheckpoint(string directory, TrainingPosition position) =>
        PretrainingCheckpoint.Save(directory, position, _network.Architecture, _fingerprint, _network, _teacher, _optimizer, _settings.CheckpointsToKeep);

    /// <inheritdoc />
    public Exception? OnCancelled(OperationCanceledException cancelled, long step)
    {
        _log?.Invoke($"Pretraining cancelled after step {step}.");
        return _settings.ReturnModelOnCancellation ? null : cancelled;
    }

    public void Dispose()
    {
        _firstBadMarker.Dispose();
        _firstBad.Dispose();
        _count.Dispose();
        _sums.Dispose();
        _state.Dispose();
        _zero.Dispose();
    }

    // Adds this step's losses to the device sums and marks the first non-finite total, without a host read.
    private void Accumulate(LossResult loss)
    {
        using var guard = no_grad();
        var d = loss.Diagnostics;
        var parts = stack(new[]
        {
            loss.Total, loss.Pixel ?? _zero, loss.Feature ?? _zero, d?.PixelUnweighted ?? _zero, d?.PixelZeroBaseline ?? _zero,
            d?.FeatureUnweighted ?? _zero, d?.FeatureTargetSharedEnergy ?? _zero,
        }.Select(t => t.detach())).to(ScalarType.Float64);
        _sums.add_(parts, TorchScalars.OneDouble);
        var total = parts.narrow(0, 0, 1);
        var isFirstBad = _firstBadMarker.eq(_zero).logical_and(total.isfinite().logical_not());
        _firstBad.copy_(where(isFirstBad, cat(new[] { _count.add(TorchScalars.OneDouble, TorchScalars.OneDouble), total }, 0), _firstBad));
        _count.add_(TorchScalars.OneDouble, TorchScalars.OneDouble);
    }

    // One host read of the epoch's device sums (a sync on a GPU); throws when a step's loss was not finite.
    private double[] ReadSums()
    {
        double[] host;
        using (NewDisposeScope())
        {
            host = _state.cpu().data<double>().ToArray();
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

    private void KeepPreviewImages(ImageBatch batch)
    {
        if (_previewPixels is not null || _settings.ReconstructionPreviewPath is null)
        {
            return;
        }

        var a = _network.Architecture;
        _previewCount = Math.Min(batch.Count, _settings.ReconstructionPreviewCount);
        _previewPixels = batch.Pixels.AsSpan(0, _previewCount * a.Channels * a.ImageSize * a.ImageSize).ToArray();
    }

    private void WritePreview(int epoch)
    {
        if (_previewPixels is null || _settings.ReconstructionPreviewPath is not { } path)
        {
            return;
        }

        // Fixed masks (one seed for the run) so successive epochs are comparable.
        var written = ReconstructionPreview.Write(_network, _previewPixels, _previewCount, _device, Seeds.Derive(_settings.Seed, 0, stream: 3), path,
            $"{(_settings.Mode == BootMaeMode.Mae ? "MAE" : "BootMAE")} reconstructions after epoch {epoch + 1}");
        _log?.Invoke($"Reconstruction preview: '{written}'.");
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

    private BootMaeEncoder ExtractEncoder()
    {
        var module = EncoderWeights.Copy(_network.Encoder, _network.Architecture, "the trained student");
        return new BootMaeEncoder(module.to(_device), _network.Architecture);
    }
}
