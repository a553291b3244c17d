namespace Microsoft.ML.BootMae;

/// <summary>Samples the masks that pretraining uses, for pictures and inspection (e.g. the paper's Fig. 2: random vs block-wise).</summary>
public static class BootMaeMasks
{
    /// <summary>Draws <paramref name="count"/> masks over the architecture's patch grid.</summary>
    /// <param name="architecture">Gives the patch grid.</param>
    /// <param name="masking">The strategy.</param>
    /// <param name="count">Number of masks.</param>
    /// <param name="seed">Seed; the same seed gives the same masks.</param>
    /// <param name="maskRatio">Share of patches masked. Default 0.75.</param>
    /// <returns>One row-major bool per patch for each mask; <c>true</c> = masked.</returns>
    public static bool[][] Sample(BootMaeArchitecture architecture, BootMaeMasking masking, int count, int seed, double maskRatio = 0.75)
    {
        ArgumentNullException.ThrowIfNull(architecture);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(count);
        architecture.Validate();
        BootMaeRuntime.EnsureTorchLoaded();
        var settings = new BootMaePretrainerSettings { Masking = masking, MaskRatio = maskRatio };
        settings.Validate();
        var generator = Training.MaskingGenerator.ForSettings(architecture, settings, seed);
        using var scope = TorchSharp.torch.NewDisposeScope();
        using var batch = generator.Next(count);
        var values = batch.Mask.cpu().contiguous().data<float>().ToArray();
        int n = architecture.NumPatches;
        return Enumerable.Range(0, count).Select(i => values.AsSpan(i * n, n).ToArray().Select(v => v > 0.5f).ToArray()).ToArray();
    }
}
