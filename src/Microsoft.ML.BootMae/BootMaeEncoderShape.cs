using System.Globalization;

namespace Microsoft.ML.BootMae;

/// <summary>
/// The part of a <see cref="BootMaeArchitecture"/> that an encoder's weights fix: input size, patching, width, depth,
/// heads, MLP ratio and input normalisation. The decoders' members (<see cref="BootMaeArchitecture.RegressorDim"/>,
/// <see cref="BootMaeArchitecture.RegressorHeads"/>, <see cref="BootMaeArchitecture.PredictorHeads"/>,
/// <see cref="BootMaeArchitecture.DecoderDepth"/>, <see cref="BootMaeArchitecture.ShallowBlock"/>,
/// <see cref="BootMaeArchitecture.DeepBlock"/>) are not part of it, so an encoder pretrained with other decoders is accepted
/// wherever only an encoder is needed: <see cref="BootMaePretrainerSettings.InitialEncoder"/>,
/// <see cref="BootMaePretrainerSettings.TeacherEncoder"/>, and the encoder given to image classification.
/// </summary>
/// <remarks>Records compare by value: two architectures whose <see cref="BootMaeArchitecture.EncoderShape"/> are equal
/// have interchangeable encoder weights.</remarks>
public sealed record BootMaeEncoderShape
{
    /// <summary>The encoder part of <paramref name="architecture"/>.</summary>
    /// <param name="architecture">The full shape.</param>
    public BootMaeEncoderShape(BootMaeArchitecture architecture)
    {
        ArgumentNullException.ThrowIfNull(architecture);
        ImageSize = architecture.ImageSize;
        PatchSize = architecture.PatchSize;
        Channels = architecture.Channels;
        EmbedDim = architecture.EmbedDim;
        Depth = architecture.Depth;
        Heads = architecture.Heads;
        MlpRatio = architecture.MlpRatio;
        Normalization = architecture.Normalization;
    }

    /// <summary><see cref="BootMaeArchitecture.ImageSize"/>.</summary>
    public int ImageSize { get; }

    /// <summary><see cref="BootMaeArchitecture.PatchSize"/>.</summary>
    public int PatchSize { get; }

    /// <summary><see cref="BootMaeArchitecture.Channels"/>.</summary>
    public int Channels { get; }

    /// <summary><see cref="BootMaeArchitecture.EmbedDim"/>.</summary>
    public int EmbedDim { get; }

    /// <summary><see cref="BootMaeArchitecture.Depth"/>.</summary>
    public int Depth { get; }

    /// <summary><see cref="BootMaeArchitecture.Heads"/>: not visible in the weights' shapes, but the weights were trained for it.</summary>
    public int Heads { get; }

    /// <summary><see cref="BootMaeArchitecture.MlpRatio"/>.</summary>
    public double MlpRatio { get; }

    /// <summary><see cref="BootMaeArchitecture.Normalization"/>: the input the weights were trained on.</summary>
    public BootMaeNormalization Normalization { get; }

    /// <summary>The members that differ, as "Name this ≠ other" items (empty when equal).</summary>
    internal IReadOnlyList<string> DifferencesFrom(BootMaeEncoderShape other)
    {
        var differences = new List<string>();
        void Compare(string name, object mine, object theirs)
        {
            if (!Equals(mine, theirs))
            {
                differences.Add(string.Format(CultureInfo.InvariantCulture, "{0} {1} ≠ {2}", name, mine, theirs));
            }
        }

        Compare(nameof(ImageSize), ImageSize, other.ImageSize);
        Compare(nameof(PatchSize), PatchSize, other.PatchSize);
        Compare(nameof(Channels), Channels, other.Channels);
        Compare(nameof(EmbedDim), EmbedDim, other.EmbedDim);
        Compare(nameof(Depth), Depth, other.Depth);
        Compare(nameof(Heads), Heads, other.Heads);
        Compare(nameof(MlpRatio), MlpRatio, other.MlpRatio);
        Compare(nameof(Normalization), Normalization, other.Normalization);
        return differences;
    }

    /// <summary>
    /// Throws <see cref="ArgumentException"/> unless an encoder of <paramref name="encoder"/> can serve a network of
    /// <paramref name="network"/>; the message names <paramref name="what"/> and each member that differs.
    /// </summary>
    internal static void RequireFits(BootMaeArchitecture encoder, BootMaeArchitecture network, string what, string networkName, string paramName)
    {
        var differences = encoder.EncoderShape.DifferencesFrom(network.EncoderShape);
        if (differences.Count > 0)
        {
            throw new ArgumentException(
                $"{what}'s weights do not fit {networkName}: {string.Join(", ", differences)} ({what}'s value first). Only the decoders' members " +
                "(RegressorDim, RegressorHeads, PredictorHeads, DecoderDepth, ShallowBlock, DeepBlock) may differ; use an encoder of this shape or change the architecture.",
                paramName);
        }
    }
}
