namespace Microsoft.ML.BootMae.Training;

// BootMAE (bootstrapped, two decoders) or plain MAE (one 8-block decoder, pixels only, no teacher).
internal enum PretrainMode
{
    BootMae,
    Mae,
}

// Which losses train the student (paper Tables 1, 3, 9).
internal enum PretrainTarget
{
    Both,
    Pixel,
    Feature,
}

// EMA: the bootstrapped momentum encoder. Frozen: a fixed pretrained encoder loaded into the teacher and never updated.
internal enum TeacherKind
{
    Ema,
    Frozen,
}

// Random: uniform random K patches. Block: block-wise up to K (random fill only for a shortfall).
// BlockFill: block-wise up to K_block, then random fill to K (the official default).
internal enum MaskingStrategy
{
    BlockFill,
    Block,
    Random,
}

// Model-side switches of spec §8. The network's shape lives in BootMaeArchitecture.
internal sealed class BootMaeModelSettings
{
    public PretrainMode Mode { get; init; } = PretrainMode.BootMae;

    public PretrainTarget Target { get; init; } = PretrainTarget.Both;

    public TeacherKind Teacher { get; init; } = TeacherKind.Ema;

    public MaskingStrategy Masking { get; init; } = MaskingStrategy.BlockFill;

    // Largest roll jitter r ~ U{0..max}; null = the scaled default round(3·N/196); 0 = off.
    public int? MaskJitter { get; init; }

    // Fraction of patches masked (K = N − int((1 − ratio)·N)). Default 0.75.
    public double MaskRatio { get; init; } = 0.75;

    public bool InjectRegressor { get; init; } = true;

    public bool InjectPredictor { get; init; } = true;

    // Centre-weighted mask w = m·(1 + AvgPool3×3(m)) for both losses; off = plain masked mean.
    public bool WeightMask { get; init; } = true;

    // Per-patch normalised pixel target (per channel in BootMAE mode, whole patch in MAE mode).
    public bool NormPixTarget { get; init; } = true;

    // Share of the image the teacher sees (paper Table 5). Values ≥ 1 mean the full image; smaller values mean
    // cls + round(fraction·N) patches sampled from the masked ones (capped at K), and L_P covers only those.
    public double TeacherFraction { get; init; } = 1.0;

    // λ, the final weight of the feature loss.
    public double FeatureWeight { get; init; } = 1.0;

    // Keep a bfloat16 compute copy of the teacher (fp32 master weights are kept and copied into it after each update).
    public bool TeacherBFloat16 { get; init; }

    // Depth of the MAE-mode decoder (MAE uses 8).
    public int MaeDecoderDepth { get; init; } = 8;

    // How the teacher's features become the target. The model default is the official LayerNorm (parity fixtures);
    // the user-facing settings default to BatchStandardized.
    public BootMaeFeatureTargetNormalization FeatureTargetNormalization { get; init; } = BootMaeFeatureTargetNormalization.LayerNorm;

    // ε added to each patch's pixel variance in the normalised pixel target (pixels in [-1, 1]); official 1e-5.
    public double PixelTargetEpsilon { get; init; } = 1e-5;

    public bool UsesPixelLoss => Mode == PretrainMode.Mae || Target != PretrainTarget.Feature;

    public bool UsesFeatureLoss => Mode == PretrainMode.BootMae && Target != PretrainTarget.Pixel;

    public void Validate()
    {
        if (MaskRatio <= 0 || MaskRatio >= 1)
        {
            throw new ArgumentException($"MaskRatio {MaskRatio} must be in (0, 1).");
        }

        if (TeacherFraction <= 0)
        {
            throw new ArgumentException($"TeacherFraction {TeacherFraction} must be positive.");
        }

        if (FeatureWeight < 0)
        {
            throw new ArgumentException($"FeatureWeight {FeatureWeight} must be non-negative.");
        }

        if (MaeDecoderDepth <= 0)
        {
            throw new ArgumentException($"MaeDecoderDepth {MaeDecoderDepth} must be positive.");
        }

        if (!(PixelTargetEpsilon > 0) || !double.IsFinite(PixelTargetEpsilon))
        {
            throw new ArgumentException($"PixelTargetEpsilon {PixelTargetEpsilon} must be a positive number.");
        }

        if (MaskJitter is < 0)
        {
            throw new ArgumentException($"MaskJitter {MaskJitter} must be non-negative.");
        }
    }
}
