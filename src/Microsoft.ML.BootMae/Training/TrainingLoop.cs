using System.Diagnostics;

namespace Microsoft.ML.BootMae.Training;

/// <summary>
/// What one kind of run (pretraining, fine-tuning) supplies to <see cref="TrainingLoop"/>: its step, its running sums
/// (kept on the device; read only when a report, a checkpoint or a check needs them), its epoch-end work and its
/// checkpoint payload. The loop owns everything else.
/// </summary>
internal interface ITrainingRun
{
    /// <summary>Non-null once the run has stopped early (early stopping); the loop logs it after that epoch's checkpoint.</summary>
    string? StopReason { get; }

    /// <summary>Before the first batch of <paramref name="epoch"/>; <paramref name="skipped"/> batches of it were done before a resume.</summary>
    void BeginEpoch(int epoch, long skipped);

    /// <summary>Trains on <paramref name="batch"/> as optimizer step <paramref name="step"/> (0-based); false when the batch
    /// could not be used and no step was taken.</summary>
    bool Step(ImageBatch batch, long step);

    /// <summary>Throws <see cref="BootMaeTrainingException"/> when a step's loss was not finite (one host read of the sums).</summary>
    void ThrowIfNotFinite();

    /// <summary>The training report's loss fields and learning rate (the loop sets position and timing), from one host
    /// read of the sums; throws as <see cref="ThrowIfNotFinite"/>; null when there is nothing to report.</summary>
    BootMaeTrainingMetrics? TrainingReport(bool isEpochEnd);

    /// <summary>Throws when <paramref name="epoch"/> gave nothing to train on (<paramref name="batchesRead"/> counts the skipped ones).</summary>
    void CheckEpochNotEmpty(int epoch, long batchesRead);

    /// <summary>After the epoch-end report (null when none was made): validation, previews, early stopping, and the
    /// reset of sums that a checkpoint carries over (sums that start from zero at each resume are reset in <see cref="BeginEpoch"/>).</summary>
    void EndEpoch(int epoch, BootMaeTrainingMetrics? report);

    /// <summary>Writes a checkpoint at <paramref name="position"/> into <paramref name="directory"/>; returns its folder.</summary>
    string SaveCheckpoint(string directory, TrainingPosition position);

    /// <summary>On cancellation, before the loop writes its checkpoint and checks the sums: what to do then. Null returns
    /// the model trained so far; <paramref name="cancelled"/> itself is rethrown as it is; any other exception is thrown instead.</summary>
    Exception? OnCancelled(OperationCanceledException cancelled, long step);
}

/// <summary>The shape of a run as the loop needs it.</summary>
/// <param name="BatchSize">Images per batch.</param>
/// <param name="StepsPerEpoch">Batches of a full epoch.</param>
/// <param name="TotalSteps">Optimizer steps of the whole run.</param>
/// <param name="Seed">Recorded in each position.</param>
/// <param name="MaxEpochs">Epochs at most, or null when the step count alone ends the run.</param>
/// <param name="LogEveryNSteps">A training report every N steps (0: at epoch ends only).</param>
/// <param name="ReportAtFinalStep">Whether the run's last step gets a step report before the epoch-end one.</param>
/// <param name="LastBatchClosesEpoch">True when an epoch's last batch ends it (its position is the next epoch's start);
/// false when the epoch end does work (validation, early stopping) that a resume must still do, so a checkpoint taken
/// after the last batch keeps the epoch open and a resume finishes it.</param>
/// <param name="CheckpointDirectory">Where checkpoints go, or null for none.</param>
/// <param name="CheckpointEveryNSteps">A checkpoint every N steps, or null for one at each epoch end.</param>
internal sealed record TrainingLoopSettings(int BatchSize, long StepsPerEpoch, long TotalSteps, int Seed, int? MaxEpochs, int LogEveryNSteps,
    bool ReportAtFinalStep, bool LastBatchClosesEpoch, string? CheckpointDirectory, long? CheckpointEveryNSteps);

/// <summary>
/// The training loop of pretraining and fine-tuning: epochs and steps from a resume position, cancellation between
/// steps, training reports every N steps and at epoch ends (with throughput and ETA), periodic checkpoints, and the stop
/// on a non-finite loss, whose message then names the last good checkpoint. Nothing here reads a tensor: the run's
/// sums are read only when a report or a checkpoint asks for them.
/// </summary>
internal sealed class TrainingLoop
{
    private readonly TrainingLoopSettings _s;
    private readonly ITrainingRun _run;
    private readonly Action<BootMaeTrainingMetrics>? _metrics;
    private readonly Action<string>? _log;
    private readonly Stopwatch _clock = Stopwatch.StartNew();
    private long _stepsThisRun;
    private long _windowImages;
    private TimeSpan _windowStart;
    private string? _lastCheckpoint;

    public TrainingLoop(TrainingLoopSettings settings, ITrainingRun run, Action<BootMaeTrainingMetrics>? metrics, Action<string>? log)
    {
        _s = settings;
        _run = run;
        _metrics = metrics;
        _log = log;
    }

    /// <summary>Optimizer steps done (the resumed ones included).</summary>
    public long Step { get; private set; }

    /// <summary>The epoch being trained.</summary>
    public int Epoch { get; private set; }

    /// <summary>Time since the loop was created.</summary>
    public TimeSpan Elapsed => _clock.Elapsed;

    /// <summary>Runs from <paramref name="start"/> until the steps are done, the epochs are done or the run stops early.</summary>
    /// <exception cref="OperationCanceledException">Cancelled, as <see cref="ITrainingRun.OnCancelled"/> decides.</exception>
    /// <exception cref="BootMaeTrainingException">A loss was not finite.</exception>
    public void Run(IImageBatchSource source, TrainingPosition start, CancellationToken token)
    {
        Step = start.Step;
        var position = start;
        try
        {
            try
            {
                // A resume into an epoch whose end is still to do (see LastBatchClosesEpoch) finishes it even when no step is left.
                for (int epoch = start.Epoch; (_s.MaxEpochs is not { } max || epoch < max)
                    && (Step < _s.TotalSteps || (!_s.LastBatchClosesEpoch && epoch == start.Epoch && start.StepInEpoch > 0))
                    && _run.StopReason is null; epoch++)
                {
                    long skip = epoch == start.Epoch ? start.StepInEpoch : 0;
                    Epoch = epoch;
                    _run.BeginEpoch(epoch, skip);
                    (_windowImages, _windowStart) = (0, _clock.Elapsed);
                    long inEpoch = 0;
                    foreach (var batch in source.ReadEpoch(epoch, _s.BatchSize, token))
                    {
                        if (inEpoch < skip)
                        {
                            inEpoch++;
                            continue;
                        }

                        token.ThrowIfCancellationRequested();
                        if (Step >= _s.TotalSteps)
                        {
                            break;
                        }

                        inEpoch++;
                        if (!_run.Step(batch, Step))
                        {
                            position = new TrainingPosition(Step, epoch, inEpoch, _s.TotalSteps, _s.Seed);
                            continue;
                        }

                        Step++;
                        _stepsThisRun++;
                        _windowImages += batch.Count;
                        position = _s.LastBatchClosesEpoch && inEpoch == _s.StepsPerEpoch
                            ? new TrainingPosition(Step, epoch + 1, 0, _s.TotalSteps, _s.Seed)
                            : new TrainingPosition(Step, epoch, inEpoch, _s.TotalSteps, _s.Seed);
                        if (_s.LogEveryNSteps > 0 && Step % _s.LogEveryNSteps == 0 && (_s.ReportAtFinalStep || Step < _s.TotalSteps))
                        {
                            ReportTraining(isEpochEnd: false);
                        }

                        if (_s.CheckpointDirectory is not null && _s.CheckpointEveryNSteps is { } every && Step % every == 0)
                        {
                            SaveCheckpoint(position);
                        }

                        if (Step >= _s.TotalSteps)
                        {
                            break;
                        }
                    }

                    _run.CheckEpochNotEmpty(epoch, inEpoch);
                    var report = ReportTraining(isEpochEnd: true);
                    _run.EndEpoch(epoch, report);

                    // A finished epoch resumes at the start of the next one.
                    position = new TrainingPosition(Step, epoch + 1, 0, _s.TotalSteps, _s.Seed);
                    if (_s.CheckpointDirectory is not null && _s.CheckpointEveryNSteps is null)
                    {
                        SaveCheckpoint(position);
                    }

                    if (_run.StopReason is { } reason)
                    {
                        _log?.Invoke(reason);
                        break;
                    }
                }
            }
            catch (OperationCanceledException cancelled) when (token.IsCancellationRequested)
            {
                var thrown = _run.OnCancelled(cancelled, Step);
                if (_s.CheckpointDirectory is not null && Step > start.Step)
                {
                    SaveCheckpoint(position);
                }

                // The model returned on cancellation must come from finite steps too.
                _run.ThrowIfNotFinite();
                if (ReferenceEquals(thrown, cancelled))
                {
                    throw;
                }

                if (thrown is not null)
                {
                    throw thrown;
                }
            }
        }
        catch (BootMaeTrainingException ex)
        {
            throw new BootMaeTrainingException(ex.Message + (_lastCheckpoint is not null
                ? $" The last good checkpoint is '{_lastCheckpoint}'."
                : _s.CheckpointDirectory is not null ? $" No checkpoint of this run was written before it; earlier ones in '{_s.CheckpointDirectory}' are untouched." : " Set CheckpointDirectory to keep checkpoints."), ex.InnerException);
        }
    }

    /// <summary>
    /// Completes <paramref name="values"/> (the run's loss fields and learning rate) with the position and timing, logs it
    /// and passes it to the metrics callback. <paramref name="images"/> were processed since <paramref name="since"/>.
    /// </summary>
    public BootMaeTrainingMetrics Publish(BootMaeTrainingMetrics values, BootMaeDataset dataset, bool isEpochEnd, long images, TimeSpan since)
    {
        var elapsed = _clock.Elapsed;
        double seconds = (elapsed - since).TotalSeconds;
        var metrics = values with
        {
            Dataset = dataset,
            Epoch = Epoch,
            Step = Step,
            TotalSteps = _s.TotalSteps,
            IsEpochEnd = isEpochEnd,
            ImagesPerSecond = seconds > 0 ? images / seconds : 0,
            Elapsed = elapsed,
            Eta = _stepsThisRun > 0 ? TimeSpan.FromSeconds(elapsed.TotalSeconds / _stepsThisRun * (_s.TotalSteps - Step)) : null,
        };
        _log?.Invoke(metrics.ToString());
        _metrics?.Invoke(metrics);
        return metrics;
    }

    private BootMaeTrainingMetrics? ReportTraining(bool isEpochEnd)
    {
        if (_run.TrainingReport(isEpochEnd) is not { } values)
        {
            return null;
        }

        var metrics = Publish(values, BootMaeDataset.Train, isEpochEnd, _windowImages, _windowStart);
        (_windowImages, _windowStart) = (0, metrics.Elapsed);
        return metrics;
    }

    private void SaveCheckpoint(TrainingPosition position)
    {
        // Never save the weights a non-finite step produced; the last good checkpoint stays.
        _run.ThrowIfNotFinite();
        _lastCheckpoint = _run.SaveCheckpoint(_s.CheckpointDirectory!, position);
        _log?.Invoke($"Checkpoint written: '{_lastCheckpoint}' (step {position.Step}).");
    }
}
