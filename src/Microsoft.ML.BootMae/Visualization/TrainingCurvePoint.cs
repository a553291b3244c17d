namespace Microsoft.ML.BootMae.Visualization;

/// <summary>One logged training step, a point of every curve drawn by <see cref="BootMaePictures.TrainingCurves(IReadOnlyList{TrainingCurvePoint}, string, string?)"/>.</summary>
/// <remarks>Any value may be <see cref="double.NaN"/> when it was not logged at that step; the curve skips it. For the
/// curves of a run, pass its <see cref="BootMaeTrainingMetrics"/> reports to
/// <see cref="BootMaePictures.TrainingCurves(IEnumerable{BootMaeTrainingMetrics}, string, string?)"/> instead; these points are
/// for values from elsewhere (another logger, a smoothed series).</remarks>
/// <param name="Step">Optimizer step (x axis).</param>
/// <param name="TotalLoss">Total BootMAE loss: pixel loss plus weighted feature loss.</param>
/// <param name="PixelLoss">Pixel-regression loss on masked patches.</param>
/// <param name="FeatureLoss">Feature-prediction loss against the EMA encoder.</param>
/// <param name="LearningRate">Learning rate used at this step.</param>
/// <param name="EmaMomentum">Momentum of the EMA (bootstrapped) encoder at this step.</param>
public sealed record TrainingCurvePoint(
    long Step,
    double TotalLoss,
    double PixelLoss,
    double FeatureLoss,
    double LearningRate,
    double EmaMomentum)
{
    // The training reports of a run as points. A report holds the means since its epoch began, so each point is the mean
    // over the steps since the previous report of the epoch: the curve does not jump at epoch starts, and an epoch-end
    // report adds the epoch's last steps (or, in a run without step reports, the whole epoch).
    internal static IReadOnlyList<TrainingCurvePoint> FromReports(IEnumerable<BootMaeTrainingMetrics> reports)
    {
        var points = new List<TrainingCurvePoint>();
        long epochStart = 0;
        BootMaeTrainingMetrics? previous = null;
        foreach (var r in reports.Where(r => r is not null && r.Dataset == BootMaeDataset.Train))
        {
            double n = r.Step - epochStart, before = previous is null ? 0 : previous.Step - epochStart;
            if (n > before)
            {
                double? Window(float? now, float? then) => now is { } x ? ((x * n) - ((then ?? 0) * before)) / (n - before) : null;
                points.Add(Of(r, Window(r.Loss, previous?.Loss)!.Value, Window(r.PixelLoss, previous?.PixelLoss), Window(r.FeatureLoss, previous?.FeatureLoss)));
            }

            (epochStart, previous) = r.IsEpochEnd ? (r.Step, null) : (epochStart, r);
        }

        return points;
    }

    private static TrainingCurvePoint Of(BootMaeTrainingMetrics r, double loss, double? pixel, double? feature) =>
        new(r.Step, loss, pixel ?? double.NaN, feature ?? double.NaN, r.LearningRate, r.EmaMomentum ?? double.NaN);
}
