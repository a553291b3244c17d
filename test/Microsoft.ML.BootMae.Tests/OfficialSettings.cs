namespace Microsoft.ML.BootMae.Tests;

/// <summary>
/// Pretraining settings with the official code's feature target (LayerNorm), which the parity fixtures were made with;
/// the user-facing default is <see cref="BootMaeFeatureTargetNormalization.BatchStandardized"/>.
/// </summary>
internal static class OfficialSettings
{
    internal static BootMaePretrainerSettings Create(Action<BootMaePretrainerSettings>? change = null)
    {
        var settings = new BootMaePretrainerSettings { FeatureTargetNormalization = BootMaeFeatureTargetNormalization.LayerNorm };
        change?.Invoke(settings);
        return settings;
    }
}
