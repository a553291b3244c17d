using TorchSharp.Modules;
using static TorchSharp.torch.utils;

namespace Microsoft.ML.BootMae.Visualization;

/// <summary>
/// Live training curves in TensorBoard: a <c>MetricsCallback</c> that writes every progress report as scalars to a
/// TensorBoard event file, through TorchSharp's own <c>torch.utils.tensorboard.SummaryWriter</c> (no other package).
/// </summary>
/// <remarks>
/// <para>
/// Give the sink to any training that takes an <see cref="Action{T}"/> of <see cref="BootMaeTrainingMetrics"/>: the
/// ML.NET trainers' <c>MetricsCallback</c> option, <c>BootMaePretrainer.Train</c> or the fine-tuning engine. Delegates
/// combine, so a console progress display and the sink can both receive the reports:
/// <c>options.MetricsCallback = progress.Report + BootMaeTensorBoard.Sink("runs/bootmae")</c>. Then run
/// <c>tensorboard --logdir runs</c> and watch the curves while the run goes on.
/// </para>
/// <para>
/// Tags are <c>group/name</c>. The group is <c>train</c> for the reports every <c>LogEveryNSteps</c> steps (means since
/// the start of the epoch), <c>train_epoch</c> for the reports that close an epoch (means over the epoch) and
/// <c>validation</c> for validation reports. The names are <c>loss</c>, <c>pixel_loss</c>, <c>feature_loss</c>,
/// <c>pixel_loss_unweighted</c>, <c>pixel_loss_zero_baseline</c>, <c>feature_loss_unweighted</c>,
/// <c>feature_target_shared_energy</c>, <c>accuracy</c>, <c>learning_rate</c>, <c>ema_momentum</c>,
/// <c>feature_weight</c> and <c>images_per_second</c>; a value a report does not carry (for example the feature loss
/// of MAE, or the accuracy of pretraining) is not written. The x axis is the optimizer step.
/// </para>
/// <para>Each report is appended and flushed to the event file at once, so TensorBoard shows it while training runs.</para>
/// </remarks>
public static class BootMaeTensorBoard
{
    /// <summary>
    /// Creates a TensorBoard event file in <paramref name="logDir"/> (created if missing) and returns a callback that
    /// writes every report it receives to it.
    /// </summary>
    /// <param name="logDir">Folder of the run, e.g. <c>runs/bootmae-small28</c>; one folder per run lets TensorBoard compare runs.</param>
    /// <returns>A metrics callback; combine it with others with <c>+</c>.</returns>
    /// <exception cref="ArgumentException"><paramref name="logDir"/> is null or blank.</exception>
    public static Action<BootMaeTrainingMetrics> Sink(string logDir)
    {
        if (string.IsNullOrWhiteSpace(logDir))
        {
            throw new ArgumentException("logDir must name a folder for the TensorBoard event file.", nameof(logDir));
        }

        return Sink(tensorboard.SummaryWriter(logDir));
    }

    /// <summary>
    /// Returns a callback that writes every report it receives to <paramref name="writer"/>, for callers that also log
    /// their own scalars, images or text to the same run.
    /// </summary>
    /// <param name="writer">A writer from <c>torch.utils.tensorboard.SummaryWriter(logDir)</c>.</param>
    /// <returns>A metrics callback; combine it with others with <c>+</c>.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="writer"/> is null.</exception>
    public static Action<BootMaeTrainingMetrics> Sink(SummaryWriter writer)
    {
        ArgumentNullException.ThrowIfNull(writer);
        var gate = new object();
        return metrics =>
        {
            if (metrics is null)
            {
                return;
            }

            lock (gate)
            {
                Write(writer, metrics);
            }
        };
    }

    private static void Write(SummaryWriter writer, BootMaeTrainingMetrics m)
    {
        string group = m.Dataset == BootMaeDataset.Validation ? "validation" : m.IsEpochEnd ? "train_epoch" : "train";
        int step = (int)Math.Clamp(m.Step, 0, int.MaxValue);
        void Add(string name, double? value)
        {
            if (value is { } v && double.IsFinite(v))
            {
                writer.add_scalar($"{group}/{name}", (float)v, step);
            }
        }

        Add("loss", m.Loss);
        Add("pixel_loss", m.PixelLoss);
        Add("feature_loss", m.FeatureLoss);
        Add("pixel_loss_unweighted", m.PixelLossUnweighted);
        Add("pixel_loss_zero_baseline", m.PixelLossZeroBaseline);
        Add("feature_loss_unweighted", m.FeatureLossUnweighted);
        Add("feature_target_shared_energy", m.FeatureTargetSharedEnergy);
        Add("accuracy", m.Accuracy);
        if (m.Dataset == BootMaeDataset.Train)
        {
            Add("learning_rate", m.LearningRate);
            Add("ema_momentum", m.EmaMomentum);
            Add("feature_weight", m.FeatureWeight);
            Add("images_per_second", m.ImagesPerSecond > 0 ? m.ImagesPerSecond : null);
        }
    }
}
