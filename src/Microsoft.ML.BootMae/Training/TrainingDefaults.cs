namespace Microsoft.ML.BootMae.Training;

/// <summary>
/// The one home of every pretraining default that both <see cref="BootMaePretrainerSettings"/> (the engine) and
/// <see cref="BootMaePretrainingEstimator.Options"/> (ML.NET) declare, and of the catalog's parameter defaults. Both
/// layers' field initialisers read these constants; <c>SettingsDefaultsTests</c> checks by reflection that the two
/// types agree on every field they share, except the differences it lists with their reasons.
/// </summary>
internal static class PretrainingDefaults
{
    internal const int MaxEpochs = 100;
    internal const int BatchSize = 64;
    internal const double LearningRate = 1.5e-3;
    internal const double MinLearningRateFraction = 0.01;
    internal const double WarmupFraction = 0.05;
    internal const double WeightDecay = 0.05;
    internal const double FeatureLossWeight = 1.0;
    internal const double FeatureLossRampFraction = 0.25;
    internal const double EmaMomentumFloor = 0.996;
    internal const double EmaRamp1Fraction = 0.125;
    internal const double EmaRamp2EndFraction = 0.5;
    internal const double MaskRatio = 0.75;
    internal const double TeacherFraction = 1.0;
    internal const double PixelTargetEpsilon = 1e-5;
    internal const int MaeDecoderDepth = 8;
    internal const int CheckpointsToKeep = 2;
    internal const int ReconstructionPreviewCount = 6;
    internal const int LogEveryNSteps = 50;
    internal const int Seed = 1;
}

/// <summary>
/// The one home of every fine-tuning default that both <see cref="FineTuneSettings"/> (the engine) and
/// <see cref="BootMaeImageClassificationTrainer.Options"/> (ML.NET) declare, and of the catalog's parameter defaults.
/// </summary>
internal static class FineTuneDefaults
{
    internal const int MaxEpochs = 20;
    internal const int BatchSize = 32;
    internal const double LearningRate = 1e-3;
    internal const double MinLearningRate = 1e-6;
    internal const double WarmupFraction = 0.1;
    internal const double WeightDecay = 0.05;
    // 0, not the official 0.1 (ViT-B, 100 epochs): at 4 blocks and a few hundred steps 0.1 cost the from-scratch
    // run 4 points and the pretrained one nothing (docs/results.md, "Choosing the fine-tuning recipe").
    internal const double DropPathRate = 0.0;
    internal const double LabelSmoothing = 0.1;
    internal const double EarlyStoppingMinDelta = 0.0;
    internal const int CheckpointsToKeep = 2;
    internal const int LogEveryNSteps = PretrainingDefaults.LogEveryNSteps;
}
