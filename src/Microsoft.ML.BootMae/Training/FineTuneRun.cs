using System.Globalization;
using Microsoft.ML.BootMae.Modules;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Training;

/// <summary>
/// One fine-tuning (or linear-probe) run as <see cref="TrainingLoop"/> drives it: the classification step, the
/// validation and early stopping at each epoch end, the best-epoch snapshot and its restore, and the checkpoint payload.
/// Owns the optimizer, the drop-path generator and the snapshot, and disposes them.
/// </summary>
internal sealed class FineTuneRun : ITrainingRun
{
    private const double Beta1 = 0.9, Beta2 = 0.999, Epsilon = 1e-8;

    private readonly ImageClassifier _model;
    private readonly int _numClasses;
    private readonly IImageBatchSource _train;
    private readonly IImageBatchSource? _validation;
    private readonly FineTuneSettings _s;
    private readonly Action<BootMaeTrainingMetrics>? _callback;
    private readonly Action<string>? _log;
    private readonly Device _device;
    private TrainingLoop? _loop;
    private CancellationToken _token;
    private long _totalSteps;
    private string _fingerprint = "";
    private Schedules? _schedule;
    private OwnedAdamW? _optimizer;
    private List<OwnedAdamW.ParamGroup> _optimizerGroups = new();
    private List<FineTuneParameterGroup> _groups = new();
    private Generator? _dropPathGenerator;
    private double _lastLearningRate;

    // The epoch's running sums (on the device; read only when reporting or checkpointing, as a read forces a GPU sync),
    // the images summed, and the sums at the last report (the window a step report averages over).
    private Tensor? _epochLoss;
    private Tensor? _epochCorrect;
    private long _epochImages, _inEpoch, _windowImages;
    private double _windowLoss, _windowCorrect, _epochTrainLoss;
    private bool _smallBatchLogged;
    private long _headWarmupSteps;
    private bool _encoderFrozen;
    private FineTuneBatchLosses? _batchLosses;
    private int _epoch;

    // Early stopping and the best epoch.
    private Dictionary<string, Tensor>? _best;
    private int _bestEpoch = -1;
    private double _bestLoss = double.PositiveInfinity;
    private int _epochsSinceBest;
    private int _lastCompletedEpoch = -1;
    private bool _returnsOnCancellation;

    public FineTuneRun(ImageClassifier model, int numClasses, IImageBatchSource train, IImageBatchSource? validation, FineTuneSettings settings,
        Action<BootMaeTrainingMetrics>? callback, Action<string>? log, Device device)
    {
        _model = model;
        _numClasses = numClasses;
        _train = train;
        _validation = validation;
        _s = settings;
        _callback = callback;
        _log = log;
        _device = device;
    }

    /// <inheritdoc />
    public string? StopReason => _s.EarlyStoppingPatience is { } patience && _epochsSinceBest >= patience
        ? $"Early stopping after epoch {_lastCompletedEpoch}: no improvement of the {(_validation is null ? "training" : "validation")} loss for {_s.EarlyStoppingPatience} epochs (best {_bestLoss:F4} at epoch {_bestEpoch})."
        : null;

    private TrainingLoop Loop => _loop!;

    public void Run(CancellationToken token)
    {
        _token = token;
        long stepsPerEpoch = _train.Count is { } n
            ? (n + _s.BatchSize - 1) / _s.BatchSize
            : _train.ReadEpoch(0, _s.BatchSize, token).LongCount();
        if (stepsPerEpoch == 0)
        {
            throw new InvalidOperationException("The training set is empty.");
        }

        _totalSteps = Math.Min(stepsPerEpoch * _s.MaxEpochs, _s.MaxSteps ?? long.MaxValue);
        _schedule = Schedules.ForFineTuning(_totalSteps, _s);
        _headWarmupSteps = _model.IsLinearProbe ? 0 : (long)Math.Round(_s.HeadWarmupFractionFor(_train.Count ?? (stepsPerEpoch * _s.BatchSize), _numClasses) * _totalSteps);
        _groups = FineTuneParameterGroups.Build(_model, _s.LayerDecayFor(_model.Encoder.Depth), _s.WeightDecay);
        using var dropPathGenerator = new Generator((ulong)Seeds.Derive(_s.Seed, 0, stream: 2));
        using var optimizer = new OwnedAdamW(
            _groups.Select(g => new OwnedAdamW.ParamGroup(g.Parameters.Select(p => p.Parameter), _s.LearningRate * g.LearningRateScale, g.WeightDecay, Beta1, Beta2, Epsilon)));
        (_optimizer, _dropPathGenerator) = (optimizer, dropPathGenerator);
        _optimizerGroups = optimizer.ParamGroups.ToList();
        if (!_model.IsLinearProbe)
        {
            _model.Encoder.SetDropPath(_s.DropPathRate, dropPathGenerator);
        }

        using var epochLoss = zeros(1, dtype: ScalarType.Float64, device: _device);
        using var epochCorrect = zeros(1, dtype: ScalarType.Int64, device: _device);
        using var batchLosses = new FineTuneBatchLosses(stepsPerEpoch, _s.BatchSize, _device);
        (_epochLoss, _epochCorrect, _batchLosses) = (epochLoss, epochCorrect, batchLosses);
        _fingerprint = Fingerprint();
        _loop = new TrainingLoop(new TrainingLoopSettings(_s.BatchSize, stepsPerEpoch, _totalSteps, _s.Seed, _s.MaxEpochs, _s.LogEveryNSteps,
            ReportAtFinalStep: true, LastBatchClosesEpoch: false, _s.CheckpointDirectory, _s.CheckpointEveryNSteps), this, _callback, _log);
        // The best-epoch snapshot lives outside any dispose scope: free it on every path, a throwing epoch or resume included.
        try
        {
            var start = new TrainingPosition(0, 0, 0, _totalSteps, _s.Seed);
            if (_s.ResumeFromCheckpoint && FineTuneCheckpoint.FindLatestValid(_s.CheckpointDirectory!, _model.Encoder.Architecture, _fingerprint, _log) is { } found)
            {
                Restore(found.Path);
                start = found.Position;
                _log?.Invoke($"Resumed from '{found.Path}' at step {start.Step} (epoch {start.Epoch}).");
            }

            _log?.Invoke($"{(_model.IsLinearProbe ? "Linear probe" : "Fine-tuning")} of a {_model.Encoder.Depth}-block encoder on features of block {_model.SourceBlock}: " +
                $"{_totalSteps} steps ({stepsPerEpoch} per epoch), {_groups.Sum(g => g.Parameters.Count)} trained tensors in {_groups.Count} groups, device {_device.type}" +
                (_headWarmupSteps > 0 ? $"; the first {_headWarmupSteps} steps train only the head (HeadWarmupFraction{(_s.HeadWarmupFraction is null ? " automatic: few labels per class" : string.Empty)})." : "."));
            try
            {
                // A checkpoint taken after the last step but before its epoch was validated still has that epoch to
                // finish (LastBatchClosesEpoch: false); one taken after early stopping has nothing left to do (StopReason).
                Loop.Run(_train, start, token);
                if (_returnsOnCancellation)
                {
                    _log?.Invoke($"Cancelled after {Loop.Step} steps; returning the model trained so far.");
                    _lastCompletedEpoch = int.MinValue;
                }
            }
            finally
            {
                _model.Encoder.SetDropPath(0, null);
                FreezeEncoderDuringHeadWarmup(long.MaxValue);
                _model.eval();
                (_epochLoss, _epochCorrect, _batchLosses, _optimizer, _dropPathGenerator) = (null, null, null, null, null);
            }

            if (_best is not null && _bestEpoch != _lastCompletedEpoch)
            {
                ImageClassifierEngine.CopyState(_model, _best, "the best-epoch snapshot");
                _log?.Invoke($"Restored the weights of epoch {_bestEpoch} (lowest {(_validation is null ? "training" : "validation")} loss {_bestLoss:F4}).");
            }
        }
        finally
        {
            ImageClassifierEngine.DisposeSnapshot(_best);
            _best = null;
        }
    }

    /// <inheritdoc />
    public void BeginEpoch(int epoch, long skipped)
    {
        _model.train();
        if (_model.IsLinearProbe)
        {
            // The frozen encoder stays deterministic; only the head's BatchNorm collects batch statistics.
            _model.Encoder.eval();
        }

        _epoch = epoch;
        _inEpoch = skipped;
        _batchLosses!.Clear();
        _windowImages = 0;
        // A resumed epoch's first window starts from the sums the checkpoint carried.
        (_windowLoss, _windowCorrect) = skipped > 0 ? (_epochLoss!.item<double>(), _epochCorrect!.item<long>()) : (0, 0);
        _smallBatchLogged = false;
    }

    /// <inheritdoc />
    public bool Step(ImageBatch batch, long step)
    {
        _inEpoch++;
        if (_model.IsLinearProbe && batch.Count < 2)
        {
            // BatchNorm cannot normalise one sample in training mode.
            if (!_smallBatchLogged)
            {
                _log?.Invoke("Skipped a training batch of one image (the probe's BatchNorm needs at least two).");
                _smallBatchLogged = true;
            }

            return false;
        }

        var labels = CheckLabels(batch, "training");
        FreezeEncoderDuringHeadWarmup(step);
        _lastLearningRate = _schedule!.LearningRate(step);
        for (int i = 0; i < _optimizerGroups.Count; i++)
        {
            _optimizerGroups[i].LearningRate = _lastLearningRate * _groups[i].LearningRateScale;
        }

        // Every draw of the step comes from (seed, step), in independent streams per use, so a resumed run
        // repeats the straight one and turning one augmentation on does not shift the others' draws.
        var crop = new Random(Seeds.Derive(_s.Seed, step, stream: 1));
        var mix = new Random(Seeds.Derive(_s.Seed, step, stream: 3));
        _dropPathGenerator!.manual_seed(Seeds.Derive(_s.Seed, step, stream: 2));
        using (var scope = NewDisposeScope())
        {
            var x = InputNormalization.Input(batch.Pixels, batch.Count, _model.Encoder.Architecture, _device);
            var y = tensor(labels, new long[] { batch.Count }).to(_device);
            if (_s.Augment)
            {
                x = FineTuneAugmentation.RandomResizedCropFlip(x, crop, DataViews.ImageAugmentation.For(_model.Encoder.Architecture).MinScale);
            }

            var targets = FineTuneAugmentation.SmoothedTargets(y, _numClasses, _s.LabelSmoothing);
            if (_s.MixupAlpha > 0 || _s.CutmixAlpha > 0)
            {
                (x, targets) = FineTuneAugmentation.MixupCutmix(x, targets, _s.MixupAlpha, _s.CutmixAlpha, mix);
            }

            var logits = _model.forward(x);
            var loss = (-(targets * nn.functional.log_softmax(logits, 1))).sum(1).mean();
            _optimizer!.ZeroGrad();
            loss.backward();
            _optimizer.Step();
            _s.AfterStep?.Invoke(new FineTuneStepTrace(step, _lastLearningRate, _groups, _optimizerGroups));
            using (no_grad())
            {
                using var count = batch.Count.ToScalar();
                var detached = loss.detach().to(ScalarType.Float64);
                _epochLoss!.add_(detached.mul(count), TorchScalars.One);
                _batchLosses!.Record(_inEpoch - 1, detached, step, _lastLearningRate);
                _epochCorrect!.add_(logits.argmax(1).eq(y).sum(), TorchScalars.One);
            }
        }

        _epochImages += batch.Count;
        _windowImages += batch.Count;
        return true;
    }

    /// <inheritdoc />
    public void ThrowIfNotFinite() => ThrowIfNotFinite(_epochLoss!.item<double>());

    /// <inheritdoc />
    public BootMaeTrainingMetrics? TrainingReport(bool isEpochEnd)
    {
        double loss = _epochLoss!.item<double>();
        ThrowIfNotFinite(loss);
        if (isEpochEnd)
        {
            _epochTrainLoss = _epochLoss.item<double>() / _epochImages;
            return Metrics(_epochTrainLoss, (double)_epochCorrect!.item<long>() / _epochImages);
        }

        double correct = _epochCorrect!.item<long>();
        var report = Metrics((loss - _windowLoss) / _windowImages, (correct - _windowCorrect) / _windowImages);
        (_windowLoss, _windowCorrect, _windowImages) = (loss, correct, 0);
        return report;
    }

    /// <inheritdoc />
    public void CheckEpochNotEmpty(int epoch, long batchesRead)
    {
        if (_epochImages == 0)
        {
            throw new InvalidOperationException($"Epoch {epoch} of the training set gave no usable batch.");
        }
    }

    /// <inheritdoc />
    public void EndEpoch(int epoch, BootMaeTrainingMetrics? report)
    {
        double monitored = _epochTrainLoss;
        if (_validation is not null)
        {
            monitored = Validate(epoch);
        }

        _lastCompletedEpoch = epoch;
        if (monitored < _bestLoss - _s.EarlyStoppingMinDelta)
        {
            _bestLoss = monitored;
            _bestEpoch = epoch;
            _epochsSinceBest = 0;
            if (_s.ReturnBestModel)
            {
                ImageClassifierEngine.DisposeSnapshot(_best);
                _best = null;
                _best = ImageClassifierEngine.Snapshot(_model);
            }
        }
        else
        {
            _epochsSinceBest++;
        }

        // The next epoch starts with fresh sums (a checkpoint carries the sums of an unfinished epoch).
        OwnedTensors.Zero(_epochLoss!);
        OwnedTensors.Zero(_epochCorrect!);
        _epochImages = 0;
    }

    /// <inheritdoc />
    public string SaveCheckpoint(string directory, TrainingPosition position)
    {
        var progress = new FineTuneProgress(double.IsFinite(_bestLoss) ? _bestLoss : null, _bestEpoch, _epochsSinceBest, _lastCompletedEpoch,
            _epochLoss!.item<double>(), _epochCorrect!.item<long>(), _epochImages, _best is not null);
        return FineTuneCheckpoint.Save(directory, position, _model.Encoder.Architecture, _fingerprint, _model, _optimizer!, progress, _best, _s.CheckpointsToKeep);
    }

    /// <inheritdoc />
    public Exception? OnCancelled(OperationCanceledException cancelled, long step)
    {
        if (!_s.ReturnModelOnCancellation || step == 0)
        {
            return new OperationCanceledException("Fine-tuning was cancelled.", _token);
        }

        _returnsOnCancellation = true;
        return null;
    }

    // LP-FT: the encoder gets no gradient (AdamW skips it: no update, no decay) before step _headWarmupSteps. Decided
    // from the step, so a resumed run is in the right phase.
    private void FreezeEncoderDuringHeadWarmup(long step)
    {
        bool frozen = step < _headWarmupSteps;
        if (frozen == _encoderFrozen)
        {
            return;
        }

        ClassifierFreezePolicy.SetEncoderTrains(_model, !frozen);
        _encoderFrozen = frozen;
        if (!frozen && step != long.MaxValue)
        {
            _log?.Invoke($"Head warm-up done after {step} steps; the encoder trains from now on.");
        }
    }

    private string Fingerprint() => _s.Fingerprint(_numClasses, _model.IsLinearProbe, _model.SourceBlock, _totalSteps, _model.Encoder.Depth, _validation is not null, _headWarmupSteps);

    private void Restore(string path)
    {
        var (progress, best) = FineTuneCheckpoint.Load(path, _model, _optimizer!);
        (_bestLoss, _bestEpoch, _epochsSinceBest, _lastCompletedEpoch) =
            (progress.BestLoss ?? double.PositiveInfinity, progress.BestEpoch, progress.EpochsSinceBest, progress.LastCompletedEpoch);
        using var lossSum = progress.EpochLossSum.ToScalar();
        using var correct = progress.EpochCorrect.ToScalar();
        _epochLoss!.fill_(lossSum);
        _epochCorrect!.fill_(correct);
        _epochImages = progress.EpochImages;
        _best = best;
    }

    private void ThrowIfNotFinite(double lossSum) => _batchLosses!.ThrowIfNotFinite(lossSum, _epoch);

    // Plain cross-entropy (no smoothing, as the official evaluation) and accuracy over the whole validation set.
    private double Validate(int epoch)
    {
        _model.eval();
        var start = Loop.Elapsed;
        double lossSum = 0;
        long correct = 0, images = 0;
        using (inference_mode())
        {
            foreach (var batch in _validation!.ReadEpoch(epoch, _s.BatchSize, _token))
            {
                _token.ThrowIfCancellationRequested();
                var labels = CheckLabels(batch, "validation");
                using var scope = NewDisposeScope();
                var y = tensor(labels, new long[] { batch.Count }).to(_device);
                var logits = _model.forward(InputNormalization.Input(batch.Pixels, batch.Count, _model.Encoder.Architecture, _device));
                lossSum += nn.functional.cross_entropy(logits, y, reduction: nn.Reduction.Sum).item<float>();
                correct += logits.argmax(1).eq(y).sum().item<long>();
                images += batch.Count;
            }
        }

        if (images == 0)
        {
            throw new InvalidOperationException("The validation set is empty.");
        }

        double loss = lossSum / images;
        Loop.Publish(Metrics(loss, (double)correct / images), BootMaeDataset.Validation, isEpochEnd: true, images, start);
        return loss;
    }

    private BootMaeTrainingMetrics Metrics(double loss, double accuracy) => new()
    {
        Loss = (float)loss,
        Accuracy = (float)accuracy,
        LearningRate = _lastLearningRate,
    };

    private long[] CheckLabels(ImageBatch batch, string set) => BatchLabels.Check(batch, set, _numClasses);
}
