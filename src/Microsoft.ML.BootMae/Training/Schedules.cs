using System.Globalization;

namespace Microsoft.ML.BootMae.Training;

/// <summary>
/// Per-step schedules of a run of <see cref="TotalSteps"/> optimizer steps, each expressed as a fraction of the run
/// so that a ten-minute CPU run and an 800-epoch run both make sense (spec §5, §7.1).
/// </summary>
/// <remarks>
/// The official code schedules the learning rate per iteration but λ and the EMA momentum per epoch; here all three
/// are per step, which is the same curve sampled more finely and keeps short runs (one or two epochs) meaningful.
/// </remarks>
internal sealed class Schedules
{
    private Schedules(long totalSteps, double baseLearningRate, double minLearningRate, double warmupFraction,
        double featureWeight, double featureRampFraction, (double Start, double Mid, double End) ema,
        double emaRamp1Fraction, double emaRamp2EndFraction)
    {
        if (totalSteps <= 0)
        {
            throw new ArgumentOutOfRangeException(nameof(totalSteps), totalSteps, "A run needs at least one step.");
        }

        if (!(ema.Start <= ema.Mid && ema.Mid <= ema.End))
        {
            throw new ArgumentException($"EMA momenta must not decrease: start {ema.Start}, mid {ema.Mid}, end {ema.End}.");
        }

        TotalSteps = totalSteps;
        BaseLearningRate = baseLearningRate;
        MinLearningRate = Math.Min(minLearningRate, baseLearningRate);
        WarmupSteps = (long)Math.Round(Math.Clamp(warmupFraction, 0, 1) * totalSteps);
        FeatureWeight = featureWeight;
        FeatureRampSteps = Math.Max(1, (long)Math.Round(Math.Clamp(featureRampFraction, 0, 1) * totalSteps));
        EmaStart = ema.Start;
        EmaMid = ema.Mid;
        EmaEnd = ema.End;
        EmaRamp1Steps = (long)Math.Round(Math.Clamp(emaRamp1Fraction, 0, 1) * totalSteps);
        EmaRamp2EndStep = Math.Max(EmaRamp1Steps, (long)Math.Round(Math.Clamp(emaRamp2EndFraction, 0, 1) * totalSteps));
    }

    /// <summary>
    /// The schedules of a pretraining run of <paramref name="totalSteps"/> steps: the peak learning rate scaled by
    /// BatchSize/256, λ's ramp, and the EMA momenta (given ones, or scaled to the run and floored). The momenta never
    /// decrease along the run (start ≤ mid ≤ end), so a given Mid or End below the value before it is raised to that
    /// value; <paramref name="log"/> says so in one line.
    /// </summary>
    public static Schedules ForPretraining(long totalSteps, BootMaePretrainerSettings s, Action<string>? log = null)
    {
        var scaled = ScaledEmaMomenta(totalSteps, s.EmaMomentumFloor);
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
            s.FeatureLossWeight, s.FeatureLossRampFraction, (start, mid, end), s.EmaRamp1Fraction, s.EmaRamp2EndFraction);
    }

    /// <summary>The learning-rate schedule of a fine-tuning run (absolute peak, no batch scaling; no λ, no EMA).</summary>
    public static Schedules ForFineTuning(long totalSteps, FineTuneSettings s) =>
        new(totalSteps, s.LearningRate, s.MinLearningRate, s.WarmupFraction, 0, 1, (0, 0, 0), 0, 0);

    public long TotalSteps { get; }

    public double BaseLearningRate { get; }

    public double MinLearningRate { get; }

    public long WarmupSteps { get; }

    public double FeatureWeight { get; }

    public long FeatureRampSteps { get; }

    public double EmaStart { get; }

    public double EmaMid { get; }

    public double EmaEnd { get; }

    public long EmaRamp1Steps { get; }

    public long EmaRamp2EndStep { get; }

    /// <summary>
    /// Learning rate of 0-based step <paramref name="step"/>: linear warmup from 0 that reaches the base value at the
    /// last warmup step, then a half cosine that reaches the minimum exactly at the last step.
    /// </summary>
    public double LearningRate(long step)
    {
        step = Math.Clamp(step, 0, TotalSteps - 1);
        if (step < WarmupSteps)
        {
            return WarmupSteps == 1 ? BaseLearningRate : BaseLearningRate * step / (WarmupSteps - 1);
        }

        long cosineSteps = TotalSteps - WarmupSteps;
        if (cosineSteps <= 1)
        {
            return WarmupSteps == 0 ? BaseLearningRate : MinLearningRate;
        }

        double progress = (double)(step - WarmupSteps) / (cosineSteps - 1);
        return MinLearningRate + 0.5 * (BaseLearningRate - MinLearningRate) * (1 + Math.Cos(Math.PI * progress));
    }

    /// <summary>
    /// Feature-loss weight λ at a step: rises linearly and equals λ from <see cref="FeatureRampSteps"/> on
    /// (the code's min(λ, 4λ(e+1)/E), i.e. a quarter of the run by default).
    /// </summary>
    public double FeatureLossWeight(long step) => FeatureWeight * Math.Min(1.0, (double)(step + 1) / FeatureRampSteps);

    /// <summary>
    /// EMA momentum at a step: <see cref="EmaStart"/> → <see cref="EmaMid"/> over the first ramp, then
    /// → <see cref="EmaEnd"/> by <see cref="EmaRamp2EndStep"/>, then constant. Never decreases.
    /// </summary>
    public double EmaMomentum(long step)
    {
        if (step < EmaRamp1Steps)
        {
            return EmaStart + (EmaMid - EmaStart) * step / EmaRamp1Steps;
        }

        if (step < EmaRamp2EndStep)
        {
            return EmaMid + (EmaEnd - EmaMid) * (step - EmaRamp1Steps) / (EmaRamp2EndStep - EmaRamp1Steps);
        }

        return EmaEnd;
    }

    /// <summary>
    /// EMA momenta that keep the teacher's horizon τ = 1/(1−m) in proportion to the run, as the original 800-epoch
    /// schedule does (τ ≈ T/250 → T/25 → T/2.5 for T ≈ 250k steps); clamped so a short run still averages, and
    /// never below <paramref name="floor"/> (the settings' EmaMomentumFloor).
    /// </summary>
    public static (double Start, double Mid, double End) ScaledEmaMomenta(long totalSteps, double floor = 0)
    {
        double FromHorizon(double tau) => Math.Max(floor, Math.Clamp(1.0 - 1.0 / Math.Max(tau, 1e-9), 0.5, 0.99999));
        return (FromHorizon(totalSteps / 250.0), FromHorizon(totalSteps / 25.0), FromHorizon(totalSteps / 2.5));
    }
}
