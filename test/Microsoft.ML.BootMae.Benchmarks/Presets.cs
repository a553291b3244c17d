namespace Microsoft.ML.BootMae.Benchmarks;

/// <summary>
/// The <see cref="BootMaeArchitecture"/> presets the commands take by name, in one table so that every
/// <c>--preset</c> option, its help and its errors agree.
/// </summary>
internal static class Presets
{
    /// <summary>Every preset, by its command-line name.</summary>
    public static readonly (string Name, BootMaeArchitecture Value)[] All =
    [
        ("tiny28", BootMaeArchitecture.Tiny28), ("small28", BootMaeArchitecture.Small28),
        ("small32", BootMaeArchitecture.Small32), ("vitb16", BootMaeArchitecture.VitBase16),
    ];

    /// <summary>The presets for 28×28 greyscale images: the commands that read Fashion-MNIST take only these.</summary>
    public static readonly (string Name, BootMaeArchitecture Value)[] Greyscale28 = All.Where(p => IsGreyscale28(p.Value)).ToArray();

    /// <summary>Whether <paramref name="a"/> takes 28×28 greyscale images (Fashion-MNIST as it is).</summary>
    public static bool IsGreyscale28(BootMaeArchitecture a) => a.ImageSize == 28 && a.Channels == 1;

    /// <summary>The preset called <paramref name="name"/> (case-insensitive).</summary>
    public static BootMaeArchitecture ByName(string name) =>
        All.FirstOrDefault(p => string.Equals(p.Name, name, StringComparison.OrdinalIgnoreCase)).Value
        ?? throw new ArgumentException($"Unknown preset '{name}': use {Names(All)}.");

    /// <summary>The names of <paramref name="presets"/>, for messages ("a, b or c").</summary>
    /// <summary>The preset with <c>--decoder-depth</c> applied when given (step, compare and evaluate).</summary>
    public static BootMaeArchitecture WithDecoderDepth(BootMaeArchitecture preset, int? decoderDepth) =>
        decoderDepth is { } depth ? preset with { DecoderDepth = depth } : preset;

    public static string Names((string Name, BootMaeArchitecture Value)[] presets) =>
        presets.Length == 1 ? presets[0].Name : string.Join(", ", presets[..^1].Select(p => p.Name)) + " or " + presets[^1].Name;
}
