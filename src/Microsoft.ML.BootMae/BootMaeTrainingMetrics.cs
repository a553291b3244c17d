using System.Globalization;

namespace Microsoft.ML.BootMae;

/// <summary>Which data a metrics report describes.</summary>
public enum BootMaeDataset
{
    /// <summary>The training set.</summary>
    Train,

    /// <summary>The validation set.</summary>
    Validation,
}

/// <summary>
/// Progress of a BootMAE training run, reported to <c>MetricsCallback</c> every <c>LogEveryNSteps</c> steps and at
/// the end of each epoch.
/// </summary>
public sealed record BootMaeTrainingMetrics
{
    /// <summary>Training or validation.</summary>
    public BootMaeDataset Dataset { get; init; }

    /// <summary>0-based epoch.</summary>
    public int Epoch { get; init; }

    /// <summary>Optimizer steps done so far (1-based after the first step).</summary>
    public long Step { get; init; }

    /// <summary>Planned optimizer steps of the whole run.</summary>
    public long TotalSteps { get; init; }

    /// <summary>True for the report that closes an epoch (averages over the epoch).</summary>
    public bool IsEpochEnd { get; init; }

    /// <summary>Total loss (pretraining: pixel + λ·feature; classification: cross-entropy), averaged over the steps of the
    /// current epoch so far (at an epoch end: over the whole epoch). The same holds for the pixel and feature losses.</summary>
    public float Loss { get; init; }

    /// <summary>Pixel-reconstruction loss L_R (pretraining only).</summary>
    public float? PixelLoss { get; init; }

    /// <summary>Feature-prediction loss L_P (BootMAE pretraining only).</summary>
    public float? FeatureLoss { get; init; }

    /// <summary>The pixel loss without the centre-weighted mask: the plain mean over masked patches (pretraining only).</summary>
    public float? PixelLossUnweighted { get; init; }

    /// <summary>What predicting 0 for every masked pixel would score in <see cref="PixelLoss"/>: the trivial baseline. A pixel loss
    /// close to it means the regressor has learned little (pretraining only).</summary>
    public float? PixelLossZeroBaseline { get; init; }

    /// <summary>The feature loss without the centre-weighted mask (BootMAE pretraining only).</summary>
    public float? FeatureLossUnweighted { get; init; }

    /// <summary>
    /// Share of the feature target's energy that all images of a batch have in common at each position, in [0, 1]
    /// (BootMAE pretraining only). Near 1 the target has collapsed: it is nearly the same for every image, and the
    /// feature loss teaches only positional means. The trainer logs a warning above 0.9.
    /// </summary>
    public float? FeatureTargetSharedEnergy { get; init; }

    /// <summary>Accuracy in [0, 1] (classification only).</summary>
    public float? Accuracy { get; init; }

    /// <summary>Learning rate of the last step (the base group, before layer decay).</summary>
    public double LearningRate { get; init; }

    /// <summary>EMA momentum of the teacher (BootMAE pretraining only).</summary>
    public double? EmaMomentum { get; init; }

    /// <summary>Feature-loss weight λ of the last step (BootMAE pretraining only).</summary>
    public double? FeatureWeight { get; init; }

    /// <summary>Training throughput since the previous report.</summary>
    public double ImagesPerSecond { get; init; }

    /// <summary>Time since training started.</summary>
    public TimeSpan Elapsed { get; init; }

    /// <summary>Estimated time to the end of the run.</summary>
    public TimeSpan? Eta { get; init; }

    /// <inheritdoc />
    public override string ToString()
    {
        var c = CultureInfo.InvariantCulture;
        var parts = new List<string>
        {
            string.Format(c, "{0} epoch {1} step {2}/{3}", Dataset, Epoch, Step, TotalSteps),
            string.Format(c, "loss {0:F4}", Loss),
        };
        if (PixelLoss is { } pixel)
        {
            parts.Add(string.Format(c, "pixel {0:F4}", pixel));
        }

        if (PixelLossZeroBaseline is { } zero)
        {
            parts.Add(string.Format(c, "(predict-0 {0:F4})", zero));
        }

        if (FeatureLoss is { } feature)
        {
            parts.Add(string.Format(c, "feature {0:F4}", feature));
        }

        if (FeatureTargetSharedEnergy is { } shared)
        {
            parts.Add(string.Format(c, "target shared {0:P0}", shared));
        }

        if (Accuracy is { } accuracy)
        {
            parts.Add(string.Format(c, "accuracy {0:P1}", accuracy));
        }

        parts.Add(string.Format(c, "lr {0:E2}", LearningRate));
        if (EmaMomentum is { } ema)
        {
            parts.Add(string.Format(c, "ema {0:F5}", ema));
        }

        if (FeatureWeight is { } lambda)
        {
            parts.Add(string.Format(c, "λ {0:F2}", lambda));
        }

        parts.Add(string.Format(c, "{0:F1} img/s", ImagesPerSecond));
        parts.Add("elapsed " + Elapsed.ToString(@"hh\:mm\:ss", c));
        if (Eta is { } eta)
        {
            parts.Add("ETA " + eta.ToString(@"hh\:mm\:ss", c));
        }

        return string.Join(", ", parts);
    }
}
