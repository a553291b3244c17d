namespace Microsoft.ML.BootMae.Visualization;

/// <summary>One logged training step, a point of every curve drawn by <see cref="BootMaePictures.TrainingCurves"/>.</summary>
/// <remarks>Any value may be <see cref="double.NaN"/> when it was not logged at that step; the curve skips it.</remarks>
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
    double EmaMomentum);
